"""bench/peers.py's pure parts: hey's summary read right (errors included), the table, the
section it replaces. The servers themselves are benchmarked, not tested."""

import pytest

from bench import peers

HEY = """
Summary:
  Total:\t10.0050 secs
  Requests/sec:\t336.4412

Latency distribution:
  10% in 0.0512 secs
  50% in 0.0881 secs
  99% in 0.2050 secs

Status code distribution:
  [200]\t3360 responses
  [503]\t4 responses

Error distribution:
  [2]\tPost "http://127.0.0.1:3000/classify": EOF
"""


def test_heys_summary_gives_rate_percentiles_and_every_failure():
    r = peers.parse_hey(HEY)
    assert r["rps"] == pytest.approx(336.4412)
    assert r["p50"] == pytest.approx(88.1)
    assert r["p99"] == pytest.approx(205.0)
    assert r["errors"] == 6  # 4 non-200 answers and 2 requests with no answer


def test_an_output_without_a_rate_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="no Requests/sec"):
        peers.parse_hey("connection refused")


def test_the_table_has_a_row_per_measurement_and_flags_errors():
    ok = {"rps": 100.0, "p50": 5.0, "p99": 9.0, "errors": 0}
    bad = {**ok, "errors": 3}
    results = {
        "this": [(row, ok) for row, _, _ in peers.ROWS],
        "litserve": [(row, bad) for row, _, _ in peers.ROWS],
    }
    text = peers.table(results, "2 cores, test CPU", 10)
    assert "| row | this | litserve |" in text
    assert text.count("| 100 (5.0 ms) | 100 (5.0 ms) **3 errors** |") == len(peers.ROWS)


def test_writing_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Serving peers\n\nold\n\n## Other\n\nkept\n")
    peers.write_section(path, "new\n")
    text = path.read_text()
    assert "old" not in text
    assert "kept" in text
    assert text.count("## Serving peers") == 1
    assert text.endswith("## Serving peers\n\nnew\n")


def test_the_multipart_body_carries_the_image_in_field_image():
    body = peers.multipart(b"\xff\xd8JPEG")
    assert b'name="image"' in body
    assert b"\xff\xd8JPEG\r\n--" + peers.BOUNDARY.encode() + b"--" in body

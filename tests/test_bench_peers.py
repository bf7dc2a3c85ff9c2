"""bench/peers.py's pure parts: hey's summary read right (failures included), the requests each
server is sent, the order of the steps, the table and the section it replaces. The servers
themselves are benchmarked, not tested: none of hey, LitServe or Triton is needed here."""

import json
import struct

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

OK = {"rps": 100.0, "p50": 5.0, "p99": 9.0, "errors": 0}


def test_heys_summary_gives_rate_percentiles_and_every_failure():
    r = peers.parse_hey(HEY)
    assert r["rps"] == 336.4
    assert r["p50"] == 88.1
    assert r["p99"] == 205.0
    assert r["errors"] == 6  # 4 non-200 answers and 2 requests with no answer


def test_an_output_without_a_rate_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="no Requests/sec"):
        peers.parse_hey("connection refused")


def test_the_raw_servers_get_the_jpeg_itself_and_triton_a_binary_tensor_of_it():
    image = b"\xff\xd8JPEG bytes\xff\xd9"
    assert peers.request("this", image) == (image, "image/jpeg", [])
    assert peers.request("litserve", image) == (image, "image/jpeg", [])
    body, kind, headers = peers.request("triton", image)
    head = int(headers[0].removeprefix("Inference-Header-Content-Length: "))
    header = json.loads(body[:head])
    (tensor,) = header["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("image", "BYTES", [1, 1])
    assert tensor["parameters"]["binary_data_size"] == len(body) - head
    assert body[head : head + 4] == struct.pack("<I", len(image))
    assert body[head + 4 :] == image
    assert kind == "application/octet-stream"


def test_hey_is_asked_for_the_duration_concurrency_body_and_headers():
    command = peers.hey_command("http://h/x", "b.body", "image/jpeg", ["A: 1"], 32, 2.5)
    assert command[:5] == ["hey", "-z", "2.5s", "-c", "32"]
    assert command[command.index("-D") + 1] == "b.body"
    assert command[command.index("-T") + 1] == "image/jpeg"
    assert command[command.index("-H") + 1] == "A: 1"
    assert command[-1] == "http://h/x"


def test_the_burst_comes_before_its_row_and_the_later_row_is_this_services_only():
    steps = [s[1].key if s[0] == "row" else s[0] for s in peers.plan("this", None)]
    assert steps == ["fresh", "c32", "burst", "after", "medium", "large"]
    steps = [s[1].key if s[0] == "row" else s[0] for s in peers.plan("this", 60)]
    assert steps[3:6] == ["after", "sleep", "later"]
    assert ("sleep", 60) in peers.plan("this", 60)
    assert "later" not in [s[1].key for s in peers.plan("litserve", 60) if s[0] == "row"]


def test_the_table_flags_cells_with_errors_and_says_why_a_server_was_not_run():
    keys = [r.key for r in peers.ROWS if r.key != "later"]
    bad = {**OK, "errors": 3}
    results = {
        "this": {"status": "ok", "rows": dict.fromkeys(keys, OK)},
        "litserve": {"status": "ok", "rows": {**dict.fromkeys(keys, OK), "c32": bad}},
        "triton": {"status": "not run: no triton venv", "rows": {}},
    }
    text = peers.table(results, None)
    lines = text.splitlines()
    assert lines[0].startswith("| server | c1 fresh, 64×64 | c32, 64×64 |")
    assert "after that" not in lines[0]
    assert lines[2].startswith("| this service | 100/s, p50 5.0 | 100/s, p50 5.0, p99 9 |")
    assert lines[2].endswith("| 0 |")
    assert "**3 errors** 100/s" in lines[3]
    assert lines[3].endswith("| 3 |")
    assert lines[4].startswith("| Triton (PyTriton) | not run: no triton venv |")
    assert {line.count("|") for line in lines} == {len(keys) + 3}


def test_the_later_column_appears_with_the_wait_and_is_empty_for_the_peers():
    keys = [r.key for r in peers.ROWS]
    results = {
        "this": {"status": "ok", "rows": dict.fromkeys(keys, OK)},
        "litserve": {"status": "ok", "rows": dict.fromkeys(set(keys) - {"later"}, OK)},
    }
    lines = peers.table(results, 60).splitlines()
    assert "c1 60 s after that" in lines[0]
    assert lines[3].split(" | ")[4] == "—"


def test_writing_replaces_only_its_own_section_in_place(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# B\n\n## Before\n\nb\n\n## Serving peers\n\nold\n\n## After\n\nkept\n")
    peers.write_section(path, "new\n")
    assert path.read_text() == (
        "# B\n\n## Before\n\nb\n\n## Serving peers\n\nnew\n\n## After\n\nkept\n"
    )


def test_writing_appends_the_section_where_there_is_none(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    peers.write_section(path, "new\n")
    assert path.read_text() == "# Benchmarks\n\n## Other\n\nkept\n\n## Serving peers\n\nnew\n"
    peers.write_section(path, "newer\n")
    assert path.read_text().endswith("## Serving peers\n\nnewer\n")


def test_the_uploads_are_the_jpeg_and_its_photo_sized_upscales():
    import io

    from PIL import Image

    images = peers.uploads(peers.small_jpeg(None))
    assert {n: Image.open(io.BytesIO(b)).size for n, b in images.items()} == {
        "small": (64, 64),
        "medium": (500, 375),
        "large": (4000, 3000),
    }


def test_an_empty_val_folder_is_a_configuration_error(tmp_path):
    with pytest.raises(peers.ConfigError, match=r"no \.JPEG"):
        peers.small_jpeg(str(tmp_path))

"""The CPU inference benchmark's pure parts: arithmetic, table, report file and argument errors.
Nothing here times anything, and no speed is asserted."""

import pytest

from serving import bench_inference as B

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse avx avx2 fma f16c
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse avx avx2 fma f16c
"""


def test_flop_share_is_work_per_second_over_the_peak():
    # 2.33 GFLOPs per image at 60 img/s is 139.8 GFLOP/s: 87.4% of a 160 GFLOP/s peak.
    assert B.flop_share(2.33, 60.0, 160.0) == pytest.approx(0.87375)
    assert B.matmul_gflops(2048, 0.1) == pytest.approx(171.8, abs=0.1)  # 2·2048³ in 0.1 s
    with pytest.raises(ValueError, match="positive"):
        B.flop_share(2.33, 60.0, 0.0)


def test_summarize_takes_the_rate_from_the_median_call():
    times = [0.1] * 98 + [0.5, 1.0]  # two stragglers move p99, not the rate
    row = B.summarize("ONNX Runtime fp32", 8, times, gflops=2.0, peak=160.0)
    assert row.calls == 100
    assert row.p50_ms == pytest.approx(100.0)
    assert 500 < row.p99_ms < 1000
    assert row.images_per_s == pytest.approx(80.0)  # 8 images per 0.1 s
    assert row.flop_share == pytest.approx(2.0 * 80.0 / 160.0)
    with pytest.raises(ValueError, match="no timed calls"):
        B.summarize("x", 1, [], 1.0, 1.0)


def test_table_is_markdown_with_one_row_per_measurement():
    rows = [
        B.Row("PyTorch eager fp32", 1, 300, 33.333, 40.0, 30.0, 0.4369),
        B.Row("ONNX Runtime fp32", 256, 5, 4200.0, 4321.5, 60.95, 0.88),
    ]
    lines = B.format_table(rows).splitlines()
    assert lines[0] == "| engine | batch | img/s | p50 ms | p99 ms | calls | of peak |"
    assert lines[1] == "|---|--:|--:|--:|--:|--:|--:|"
    assert lines[2] == "| PyTorch eager fp32 | 1 | 30.0 | 33.3 | 40.0 | 300 | 43.7% |"
    assert lines[3] == "| ONNX Runtime fp32 | 256 | 61.0 | 4200.0 | 4321.5 | 5 | 88.0% |"
    assert B.format_row(B.Row("e", 1, 9, 5.0, 7.25, 200.0, 0.5)).split(" | ")[3:5] == [
        "5.00",
        "7.25",
    ]


def test_cpu_info_reads_the_first_model_name_and_simd_flags():
    assert B.cpu_info(CPUINFO) == ("AMD EPYC 7B13", ["avx2", "fma"])
    assert B.cpu_info("") == ("unknown CPU", [])


def test_append_starts_a_new_file_with_a_title_and_keeps_old_sections(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    B.append(path, "## first\n")
    B.append(path, "## second\n")
    text = path.read_text()
    assert text.startswith("# Benchmarks\n")
    assert text.count("# Benchmarks") == 1
    assert text.index("## first") < text.index("## second")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-b", "0", "8"], "batch sizes must be >= 1"),
        (["--seconds", "0"], "--seconds must be positive"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--model", "no/such.onnx"], "--model: no such file"),
        (["--checkpoint", "no/such.pt"], "--checkpoint: no such file"),
        (["--int8", "no/such-int8.onnx"], "--int8: no such file"),
    ],
)
def test_argument_errors_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        B.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_a_file_that_is_not_an_export_is_refused(tmp_path, capsys):
    from tests.serving_fixtures import build_model

    model = build_model(classes=4)
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    path.write_bytes(model.SerializeToString())
    assert B.main(["--model", str(path), "--seconds", "0.01"]) == 2
    assert "not a model exported by" in capsys.readouterr().err


def test_plan_skips_pytorch_without_a_checkpoint_and_says_why(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    engines, notes = B.plan(B.parse_args(["--model", str(model)]))
    assert [name for name, _, _ in engines] == ["ONNX Runtime fp32"]
    assert any("PyTorch eager: skipped" in n and "--checkpoint" in n for n in notes)
    int8 = tmp_path / "q.onnx"
    int8.write_bytes(b"")
    engines, _ = B.plan(B.parse_args(["--model", str(model), "--int8", str(int8)]))
    assert [name for name, _, _ in engines] == ["ONNX Runtime fp32", "ONNX Runtime INT8"]


def test_every_row_must_be_the_same_network():
    r34 = {"block": "basic", "layers": [3, 4, 6, 3], "stem": "small"}
    B.same_network("--checkpoint", dict(r34), r34)  # lists or tuples alike
    with pytest.raises(ValueError, match="different network"):
        B.same_network("--int8 q.onnx", {**r34, "layers": [2, 2, 2, 2]}, r34)

"""The benchmarks' pure parts: arithmetic, tables, report file, argument errors, and the HTTP
benchmark's ratio to the raw backend. Nothing here times anything, and no speed is asserted."""

import numpy as np
import pytest

from bench import http as H
from bench import inference as B
from inference.backend import read_card
from inference.contract import random_images
from tests.serving_fixtures import write_model

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


def test_summarize_pools_the_rounds_and_takes_the_rate_from_the_median_call():
    rounds = [[0.1] * 49 + [0.5], [0.1] * 40 + [0.08] * 9 + [1.0]]  # stragglers move p99 only
    row = B.summarize("ONNX Runtime fp32", 8, rounds, gflops=2.0, peak=160.0)
    assert row.calls == 100
    assert row.p50_ms == pytest.approx(100.0)
    assert 500 < row.p99_ms < 1000
    assert row.images_per_s == pytest.approx(80.0)  # 8 images per 0.1 s
    assert row.flop_share == pytest.approx(2.0 * 80.0 / 160.0)
    assert row.round_rates == pytest.approx((80.0, 80.0))
    fast = B.summarize("x", 8, [[0.1] * 3, [0.08] * 3], 2.0, 160.0)
    assert fast.round_rates == pytest.approx((80.0, 100.0))
    with pytest.raises(ValueError, match="no timed calls"):
        B.summarize("x", 1, [[], []], 1.0, 1.0)


def test_table_is_markdown_with_one_row_per_measurement():
    rows = [
        B.Row("PyTorch eager fp32", 1, 300, 33.333, 40.0, 30.0, 0.4369, (28.44, 31.0, 30.2)),
        B.Row("ONNX Runtime fp32", 256, 6, 4200.0, 4321.5, 60.95, 0.88, (55.0, 61.0)),
    ]
    lines = B.format_table(rows).splitlines()
    assert lines[0] == "| engine | batch | img/s | rounds | p50 ms | p99 ms | calls | of peak |"
    assert lines[1] == "|---|--:|--:|--:|--:|--:|--:|--:|"
    assert lines[2] == "| PyTorch eager fp32 | 1 | 30.0 | 28.4-31.0 | 33.3 | 40.0 | 300 | 43.7% |"
    assert (
        lines[3] == "| ONNX Runtime fp32 | 256 | 61.0 | 55.0-61.0 | 4200.0 | 4321.5 | 6 | 88.0% |"
    )
    small = B.format_row(B.Row("e", 1, 9, 5.0, 7.25, 200.0, 0.5, (200.0,)))
    assert small.split(" | ")[4:6] == ["5.00", "7.25"]


def test_engines_take_turns_in_every_round(monkeypatch):
    monkeypatch.setattr(B, "WARMUP_S", 0.0)
    calls = []
    engines = {name: (lambda x, name=name: calls.append((name, len(x)))) for name in "ab"}
    times = B.measure(engines, [1, 3], seconds=1e-9, rounds=2)
    assert list(times) == [("a", 1), ("a", 3), ("b", 1), ("b", 3)]
    assert all(len(t) == 2 and all(len(r) >= B.MIN_CALLS for r in t) for t in times.values())
    order = [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]  # one per cell
    assert order == [("a", 1), ("a", 3), ("b", 1), ("b", 3)] * 2


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
        (["--rounds", "0"], "--rounds must be >= 1"),
        (["--model", "no/such.onnx"], "--model: no such file"),
        (["--checkpoint", "no/such.pt"], "--checkpoint: no such file"),
        (["--engines", "tensorrt:int8"], "unknown engine 'tensorrt:int8'; valid: onnxruntime:fp32"),
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


def test_plan_runs_what_is_here_and_says_why_the_rest_is_not(tmp_path):
    model = write_model(tmp_path / "m.onnx")  # no INT8 forms beside it, no checkpoint
    args = B.parse_args(["--model", str(model), "--threads", "1"])
    engines, notes = B.plan(args, read_card(model).model_config)
    assert list(engines) == ["onnxruntime:fp32", "openvino:fp32", "openvino:bf16"]
    assert {p for _, p in engines.values()} == {"fp32", "bf16"}
    assert any("PyTorch eager: skipped" in n and "--checkpoint" in n for n in notes)
    assert any(n.startswith("onnxruntime:int8: skipped") and "m.int8.onnx" in n for n in notes)
    predict, _ = engines["openvino:fp32"]
    x = random_images(3)
    np.testing.assert_allclose(predict(x), engines["onnxruntime:fp32"][0](x), atol=1e-5)


def test_every_row_must_be_the_same_network():
    r34 = {"block": "basic", "layers": [3, 4, 6, 3], "stem": "small"}
    B.same_network("--checkpoint", dict(r34), r34)  # lists or tuples alike
    with pytest.raises(ValueError, match="different network"):
        B.same_network("--int8 q.onnx", {**r34, "layers": [2, 2, 2, 2]}, r34)


def test_other_processes_share_is_busy_time_not_spent_by_this_process():
    stat = "cpu  100 5 50 800 10 3 2 0 0 0\ncpu0 50 2 25 400 5 1 1 0 0 0\n"
    assert B.cpu_jiffies(stat) == (160, 970)  # busy = total − idle − iowait
    me = "4242 (python -m x) R 1 2 3 4 5 6 7 8 9 10 70 30 0 0 20 0 3 0"
    assert B.own_jiffies(me) == 100  # utime + stime, fields 14 and 15
    # 200 ticks of both cores elapse; 150 are busy, 120 of them this process's: others 15%.
    assert B.others_share((0, 0, 0), (150, 200, 120)) == pytest.approx(0.15)
    assert B.others_share((0, 0, 0), (100, 200, 120)) == 0.0  # tick rounding, never negative
    assert B.others_share((5, 5, 5), (5, 5, 5)) == 0.0


def test_bench_ratio_to_raw_backend_uses_each_levels_model_batch(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    model = write_model(tmp_path / "tiny.onnx")
    timed = []

    def fake_raw(path, batch, seconds=5.0):
        timed.append(batch)
        return 100.0 * batch

    rows = [
        {"images_per_s": 50.0, "requests_per_model_call": 1.0},
        {"images_per_s": 300.0, "requests_per_model_call": 3.6},  # batches of 4 (rounded)
        {"images_per_s": 10.0, "requests_per_model_call": None},  # no model call counted
    ]
    monkeypatch.setattr(H, "raw_rate", fake_raw)
    H.add_raw_ratios(rows, model, per_request=1)
    assert timed == [1, 4]
    assert [r.get("vs_raw") for r in rows] == [0.5, 0.75, None]
    assert rows[1]["model_batch"] == 4
    # The real timing runs the service's own backend on that batch.
    assert H.raw_rate(model, 2, seconds=0.2) > 0


def test_accuracy_scores_each_engine_against_the_val_labels(tmp_path, capsys):
    """bench.accuracy: top-1 against val_annotations.txt, through the service's decoding and
    backend; half the labels here are the model's own answers, half are not."""
    from bench import accuracy
    from inference.preprocess import decode
    from tests.serving_fixtures import fixture_card, fixture_images, reference_probabilities

    model = write_model(tmp_path / "model.onnx")
    wnids = fixture_card().wnids
    (tmp_path / "val" / "images").mkdir(parents=True)
    files = fixture_images(8)
    predicted = reference_probabilities(np.stack([decode(f) for f in files])).argmax(1)
    lines = []
    for i, (data, p) in enumerate(zip(files, predicted, strict=True)):
        (tmp_path / "val" / "images" / f"val_{i}.JPEG").write_bytes(data)
        label = p if i < 4 else (p + 1) % len(wnids)
        lines.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")

    argv = [str(tmp_path / "val"), "--model", str(model), "--engines", "openvino:fp32"]
    assert accuracy.main(argv) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["onnxruntime:fp32"] == ["50.00%", "100.00%", "100.00%"]
    assert rows["openvino:fp32"] == ["50.00%", "100.00%", "100.00%"]

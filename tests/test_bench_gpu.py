"""The GPU-lease scripts work before a lease: scripts/gpu/bench_gpu.py runs on CPU with the smoke
preset and prints every row it promises; scripts/gpu/rows.py turns a brought-back run into the
README's results row."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_prints_each_training_variant_and_inference_row():
    cmd = [sys.executable, "scripts/gpu/bench_gpu.py", "--preset", "smoke", "--steps", "1"]
    cmd += ["--calls", "2", "--batches", "1", "2", "--no-compile"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout.split("## GPU speed")[-1]
    for row in ("| as preset |", "| bf16 on |", "| channels_last off |", "stochastic depth on"):
        assert row in table
    for batch in (1, 2):
        assert f"| eager fp32 | {batch} |" in table
        assert f"| eager bf16 | {batch} |" in table
    assert "TensorRT: not installable here, not run" in table


def test_rows_prints_the_papers_number_beside_ours(tmp_path):
    run = tmp_path / "sun-final-resnet34"
    run.mkdir()
    rows = [
        {"epoch": e, "val_top1_error": 0.5, "val_top5_error": 0.2, "img_per_s": r, "seconds": s}
        for e, r, s in ((1, 900.0, 60.0), (2, 1100.0, 120.0), (3, 1000.0, 180.0))
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # evaluation.json, when collect_rows.sh got to write it, wins over the last epoch's figures
    (run / "evaluation.json").write_text(json.dumps({"top1_error": 0.36, "top5_error": 0.15}))
    cmd = [sys.executable, "scripts/gpu/rows.py", str(run)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "| `sun-final-resnet34` | 65.32% | 64.00% / 85.00% | 3.0 | 3.0 | 1,000 | -1.3 |" in out

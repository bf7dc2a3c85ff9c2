"""scripts/gpu/bench_gpu.py runs (on CPU, with the smoke preset) and prints every row it promises,
so the script a GPU lease depends on cannot rot between leases."""

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
        assert f"| eager fp32 | {batch} |" in table and f"| eager bf16 | {batch} |" in table
    assert "TensorRT: not installable here, not run" in table

"""`torchrun --nproc_per_node=2 -m training.train`: two CPU processes on gloo, smoke preset.

Checks that the run completes, that both ranks end with the same weights (the run's own
replicas.json, see training.train.check_replicas), that only rank 0 writes into the run folder,
and that a run stopped by SIGTERM and resumed ends bit-identical to an uninterrupted one.

This file is also the entry point torchrun starts: run as a script, it records every file each
rank writes (save_checkpoint, Path.write_text, the curves) to $DDP_WRITES/rank<N>.txt and then
runs `training.train.main`.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 6  # 48 fixture images / global batch 8 = 6 steps an epoch
ARGS = ["--preset", "smoke", "--epochs", str(EPOCHS)]
# Stochastic depth (blocks dropped: DDP's unused parameters), EMA and mixup all on.
ARGS += ["--set", "model.survival_last=0.5", "--set", "optim.ema=0.9", "--set", "optim.mixup=0.2"]


def torchrun(data: Path, out: Path, writes: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [__file__, *ARGS, "--data", str(data), "--out", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "DDP_WRITES": str(writes)}
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a hung run is killed whole
    )


def finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    """The run's output once it has exited 0; a run still going after `timeout` seconds (ranks
    that disagree end up blocked in a collective) is killed, with its workers, and fails."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun hung for {timeout} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def written(writes: Path, rank: int, run: Path) -> set[str]:
    """The files in the run folder that `rank` wrote (the dataset cache is not the run's)."""
    f = writes / f"rank{rank}.txt"
    paths = {Path(p).resolve() for p in f.read_text().split()} if f.exists() else set()
    return {p.name for p in paths if p.is_relative_to(run.resolve())}


def weights(path: Path) -> dict:
    import torch

    ckpt = torch.load(path, weights_only=True)
    return {
        **{f"model.{k}": v for k, v in ckpt["model"].items()},
        **{f"ema.{k}": v for k, v in ckpt["ema"].items()},
    }


def test_two_processes_agree_write_once_and_resume_exactly(tiny_zip, tmp_path):
    import torch

    # An uninterrupted run.
    a, wa = tmp_path / "a", tmp_path / "writes-a"
    finish(torchrun(tiny_zip, a, wa))
    replicas = json.loads((a / "replicas.json").read_text())
    assert replicas["world"] == 2
    assert replicas["step"] == EPOCHS * 6
    assert len(set(replicas["sha256"])) == 1, replicas
    rows = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [float(e) for e in range(1, EPOCHS + 1)]
    assert written(wa, 1, a) == set()  # one writer
    assert written(wa, 0, a) >= {
        "config.json",
        "metrics.jsonl",
        "curves.png",
        "last.pt",
        "best.pt",
        "replicas.json",
    }

    # The same run, stopped by SIGTERM to torchrun after its first epoch, then resumed.
    b, wb = tmp_path / "b", tmp_path / "writes-b"
    proc = torchrun(tiny_zip, b, wb)
    deadline = time.monotonic() + 240
    while not (b / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    out = proc.communicate(timeout=120)[0]
    stopped = torch.load(b / "last.pt", weights_only=True)["train"]["step"]
    assert 0 < stopped < EPOCHS * 6, out[-3000:]
    assert '"interrupted": true' in out  # rank 0 saved on the way out, not killed
    finish(torchrun(tiny_zip, b, wb, "--resume"))
    assert written(wb, 1, b) == set()

    wa_, wb_ = weights(a / "last.pt"), weights(b / "last.pt")
    assert wa_.keys() == wb_.keys()
    for k in wa_:
        torch.testing.assert_close(wa_[k], wb_[k], rtol=0, atol=0, msg=k)
    assert json.loads((b / "replicas.json").read_text())["sha256"] == replicas["sha256"]
    rows_b = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert len(rows_b) == EPOCHS
    for ra, rb in zip(rows, rows_b, strict=True):  # train sums are over both ranks' images
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
        assert ra["val_top1_error"] == rb["val_top1_error"]


def test_time_limited_run_keeps_the_replicas_equal(tiny_zip, tmp_path):
    # The schedule follows the clock: each rank reading its own clock would step with its own
    # learning rate (and could stop a step apart, leaving the other blocked in all-reduce).
    out = tmp_path / "run"
    finish(torchrun(tiny_zip, out, tmp_path / "writes", "--time-limit", "0.1", "--epochs", "1000"))
    replicas = json.loads((out / "replicas.json").read_text())
    assert len(set(replicas["sha256"])) == 1, replicas
    assert 0 < replicas["step"] < 1000 * 6


def _record_writes_then_train() -> int:
    """torchrun's entry: training.train.main, with each file a rank writes logged."""
    import pathlib

    from training import train as T

    log = Path(os.environ["DDP_WRITES"]) / f"rank{os.environ['RANK']}.txt"
    log.parent.mkdir(parents=True, exist_ok=True)

    def logged(fn, at: int = 0):  # `at`: the position of the path argument
        def wrapper(*args, **kwargs):
            with log.open("a") as f:
                f.write(f"{args[at]}\n")
            return fn(*args, **kwargs)

        return wrapper

    T.save_checkpoint = logged(T.save_checkpoint)
    T.plot_curves = logged(T.plot_curves, at=1)
    pathlib.Path.write_text = logged(pathlib.Path.write_text)
    return T.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_record_writes_then_train())

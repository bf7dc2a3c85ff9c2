"""The GPU training step, checked on CPU: the model and loss compile to one graph with no graph
break and no recompile across steps with changing stochastic-depth draws and mixing weights; the
device-resident batches equal a plain host-side reference; the throughput model and the lease's
plan print their figures; the whole lease rehearses end to end with the smoke preset."""

import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from training import presets as P
from training import train as T
from training.augment import Augment
from training.config import ConfigError
from training.regularizers import drop_path


def small_final():
    """`final`'s step (drop per sample, compile, low-res switch off) on a narrow net."""
    return P.get(
        "final",
        model={"layers": (1, 1, 1, 1), "widths": (8, 16, 16, 16), "num_classes": 4},
        optim={"batch_size": 8, "mixup": 0.2, "cutmix": 1.0, "mix_prob": 0.5},
        run={"bf16": False},
        schedule={"low_res": 0},
    )


def test_compiled_step_is_one_graph_without_breaks_or_recompiles():
    torch._dynamo.reset()
    counters.clear()
    cfg = small_final()
    state = T.build_state(cfg, torch.device("cpu"))
    fwd = T.make_forward_loss(state.model, cfg)
    augment = Augment(cfg.augment, (120.0,) * 3, (60.0,) * 3)
    x = torch.randint(0, 256, (8, 64, 64, 3), dtype=torch.uint8)
    y = torch.arange(8) % 4
    losses = []
    for step in range(6):  # different drop draws, mixed and unmixed steps, lam values, lr
        state.step = step
        loss, _ = T.train_step(state, fwd, augment, x, y, cfg, 0.1 / (step + 1))
        losses.append(loss.item())
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1
    assert all(np.isfinite(losses))


def test_compile_refuses_whole_batch_drops():
    cfg = P.get("smoke", model={"survival_last": 0.5}, run={"compile": True})
    with pytest.raises(ConfigError, match="drop_mode 'sample'"):
        T.make_forward_loss(torch.nn.Identity(), cfg)


def test_drop_path_conventions():
    y = torch.ones(1000, 2)
    torch.testing.assert_close(drop_path(y, 0.8, training=False, per_sample=True), 0.8 * y)
    assert drop_path(y, 0.8, training=True, per_sample=False) is y
    kept = drop_path(y, 0.8, training=True, per_sample=True)[:, 0]
    assert set(kept.tolist()) == {0.0, 1.0}
    assert abs(kept.mean().item() - 0.8) < 0.05
    assert drop_path(y, 1.0, training=True, per_sample=True) is y


def test_device_batches_match_a_host_reference():
    """The trainer's on-device order and masked augmentation against a plain host pipeline:
    numpy gather by the same permutation, augmentation computing only the chosen images."""
    cfg = P.get("smoke")
    state = T.build_state(cfg, torch.device("cpu"))
    images = np.random.default_rng(0).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    x, y = torch.from_numpy(images), torch.arange(40)
    ref_gen = torch.Generator().manual_seed(cfg.run.seed)
    device_aug = Augment(cfg.augment, (120.0,) * 3, (60.0,) * 3)
    for step in range(7):  # across an epoch boundary (5 batches of 8)
        if step % 5 == 0:
            perm = torch.randperm(40, generator=ref_gen).numpy()
        xb, yb = T.next_batch(state, x, y, 8)
        idx = perm[(step % 5) * 8 : (step % 5 + 1) * 8]
        assert torch.equal(yb, torch.from_numpy(idx))
        assert np.array_equal(xb.numpy(), images[idx])
        g1, g2 = torch.Generator().manual_seed(step), torch.Generator().manual_seed(step)
        import training.augment as A

        masked = device_aug(xb, g1)
        original = A._apply
        try:  # the host path: only the chosen images computed
            A._apply = lambda *a, f=original, **k: f(*a, **{**k, "subset": True})
            host = device_aug(torch.from_numpy(images[idx]), g2)
        finally:
            A._apply = original
        torch.testing.assert_close(masked, host, atol=1e-5, rtol=1e-5)


def test_holdout_split_is_seeded_and_disjoint():
    keep, held = T.holdout_split(100, 10, seed=0)
    assert len(held) == 10
    assert len(keep) == 90
    assert not set(keep) & set(held)
    assert np.array_equal(held, T.holdout_split(100, 10, seed=0)[1])
    with pytest.raises(ConfigError):
        T.holdout_split(10, 10, seed=0)


def test_throughput_model_prints_the_prediction():
    r = subprocess.run([sys.executable, "-m", "training.throughput", "--preset", "final"],
                       capture_output=True, text=True, check=True)  # fmt: skip
    lines = [x for x in r.stdout.splitlines() if x.startswith("predicted:")]
    assert len(lines) == 2  # at 40% and at 18% of the peak
    assert "56 px" in r.stdout
    assert "64 px" in r.stdout
    rate = float(lines[0].split()[1].replace(",", ""))
    assert 30_000 < rate < 80_000  # 6.99 GFLOP per 64-px image at 312 TFLOP/s is 44.6k


def test_lease_plan_fits_the_budget(tmp_path):
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / "SHA256SUMS").write_text("ab" * 32 + "  tiny-imagenet-200.zip\n")
    for k in range(3):  # the real parts' size: 145 MB in all
        (shared / f"tiny-imagenet-200.zip.gz.0{k}").write_bytes(b"\0" * 50_000_000)
    sys.path.insert(0, "scripts/gpu")
    import lease

    tree, whl = 2.0, 3.0
    parts = lease.part_sizes(tmp_path / "none", tmp_path / "shared", tree, whl)
    calls = lease.plan("final", 8.0, tree, parts, whl, "ab" * 32)
    total = lease.print_plan(calls)
    assert total <= 13 * 60
    assert all(c.mib <= 64 for c in calls)
    assert [c.name for c in calls][-1] == "collect"
    assert calls[0].command.startswith("bash scripts/gpu/lease.sh start final ")


def test_lease_rehearsal_then_ship(tiny_zip, tmp_path):
    work = tmp_path / "lease"
    cmd = [sys.executable, "scripts/gpu/lease.py", "rehearse", "--zip", str(tiny_zip), "--preset",
           "smoke", "--minutes", "0.2", "--dir", str(work), "--gap", "6"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "planned device time" in r.stdout
    back = sorted(work.glob("call*/out"))[-1]
    names = {f.name for f in back.iterdir()}
    assert {"model.pt.part0", "model.pt.sha256", "run.tar.gz"} <= names
    with tarfile.open(back / "run.tar.gz") as t:
        speed = json.load(t.extractfile("speed.json"))  # the warm-up ran before the data came
        assert {"metrics.jsonl", "curves.png", "config.json"} <= set(t.getnames())
    assert speed["rows"][0]["setting"] == "as configured"
    assert speed["bf16_matmul_tflops"] > 0
    models, log = tmp_path / "models", tmp_path / "LOG.md"
    ship = [sys.executable, "scripts/gpu/ship.py", str(back), "--data", str(tiny_zip),
            "--models", str(models), "--log", str(log), "--no-int8"]  # fmt: skip
    r = subprocess.run(ship, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {"model.pt", "model.onnx", "README.md", "evaluation.json"} <= {
        f.name for f in models.iterdir()
    }
    assert "shipped" in log.read_text()
    # The same model again does not beat itself: reported, not shipped.
    r = subprocess.run(ship, capture_output=True, text=True)
    assert r.returncode == 1
    assert "not shipped" in r.stdout
    # A corrupted piece is refused by its hash.
    (back / "model.pt.part0").write_bytes(b"corrupt")
    r = subprocess.run(ship, capture_output=True, text=True)
    assert r.returncode != 0
    assert "SHA-256" in r.stderr

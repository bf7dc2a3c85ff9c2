import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training import presets as P
from training import train as T
from training.checkpoint import CheckpointError, load_checkpoint, load_model
from training.config import ConfigError, parse_overrides
from training.evaluate import evaluate_checkpoint
from training.fixtures import write_fixture


def smoke(**overrides):
    return P.get("smoke", **overrides)


def weights(path):
    return load_checkpoint(path)["model"]


def test_smoke_end_to_end(tiny_zip, tmp_path):
    out = tmp_path / "run"
    row = T.train(smoke(), tiny_zip, out, preset="smoke", progress=False)
    assert {p.name for p in out.iterdir()} >= {
        "last.pt",
        "best.pt",
        "metrics.jsonl",
        "curves.png",
        "config.json",
    }
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    assert rows[-1] == row
    for key in ("train_loss", "val_top1_error", "val_top5_error", "lr", "img_per_s", "seconds"):
        assert key in row
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["preset"] == "smoke"
    assert ckpt["classes"]["names"][0] == "goldfish"
    assert len(ckpt["preprocessing"]["mean"]) == 3
    assert ckpt["config"]["model"] == json.loads((out / "config.json").read_text())["model"]
    report = evaluate_checkpoint(out / "best.pt", tiny_zip, out=out / "eval", device="cpu")
    assert report["images"] == 16
    assert 0 <= report["top1_error"] <= 1
    assert report["top5_error"] <= report["top1_error"]
    assert len(report["per_class_accuracy"]) == 4
    assert (out / "eval" / "evaluation.json").is_file()
    assert (out / "eval" / "errors.png").is_file()


def test_checkpoint_rebuilds_the_same_network(tiny_zip, tmp_path):
    T.train(smoke(run={"epochs": 1}), tiny_zip, tmp_path, progress=False)
    model, ckpt = load_model(tmp_path / "last.pt")
    saved = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    rebuilt = model.state_dict()
    assert rebuilt.keys() == saved.keys()
    for k in saved:
        torch.testing.assert_close(rebuilt[k], saved[k], rtol=0, atol=0, msg=k)
    assert not model.training
    x = torch.randn(3, 3, 64, 64)
    assert model(x).shape == (3, 4)


def test_learns_a_learnable_task(tmp_path):
    root = write_fixture(tmp_path, classes=4, train=40, val=4)
    cfg = smoke(
        augment={"preset": "none"},
        data={"per_class": None},
        optim={"batch_size": 16},
        run={"epochs": 6},
    )
    row = T.train(cfg, root, tmp_path / "run", progress=False)
    assert row["train_top1_error"] <= 0.10


def test_evaluation_mid_run_hands_back_training_mode():
    # Regression: predict() once left the network in eval mode, so every epoch after the first
    # trained on frozen batch-norm statistics and diverged.
    from training.evaluate import predict
    from training.models import build_model

    model = P.get("smoke").model
    net = build_model(model).train()
    predict(net, torch.zeros(2, 64, 64, 3, dtype=torch.uint8), (0, 0, 0), (1, 1, 1))
    assert net.training
    net.eval()
    predict(net, torch.zeros(2, 64, 64, 3, dtype=torch.uint8), (0, 0, 0), (1, 1, 1))
    assert not net.training


def test_longer_smoke_run_stays_finite(tiny_zip, tmp_path):
    row = T.train(smoke(run={"epochs": 20}), tiny_zip, tmp_path, progress=False)
    assert row["train_top1_error"] < 0.5


def test_a_diverged_run_stops_without_overwriting_its_checkpoint(tiny_zip, tmp_path):
    T.train(smoke(run={"epochs": 1}), tiny_zip, tmp_path, progress=False)
    good = weights(tmp_path / "last.pt")
    with pytest.raises(T.DivergedError, match=r"schedule\.lr"):
        T.train(smoke(run={"epochs": 2}, schedule={"lr": 1e30}), tiny_zip, tmp_path, resume=True)
    after = weights(tmp_path / "last.pt")
    for k in good:
        torch.testing.assert_close(after[k], good[k], rtol=0, atol=0, msg=k)


def test_resume_after_one_epoch_matches_an_uninterrupted_run(tiny_zip, tmp_path, monkeypatch):
    cfg = smoke(optim={"ema": 0.9, "mixup": 0.2, "cutmix": 1.0, "mix_prob": 0.5})
    T.train(cfg, tiny_zip, tmp_path / "a", progress=False)

    real_end_epoch = T.end_epoch

    def end_epoch_then_sigterm(*args, **kwargs):
        row = real_end_epoch(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # stops the loop, as a scheduler would
        return row

    monkeypatch.setattr(T, "end_epoch", end_epoch_then_sigterm)
    stopped = T.train(cfg, tiny_zip, tmp_path / "b", progress=False)
    assert stopped["interrupted"] is True
    monkeypatch.setattr(T, "end_epoch", real_end_epoch)
    T.train(cfg, tiny_zip, tmp_path / "b", resume=True, progress=False)

    a, b = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    ha = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    hb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(ha) == len(hb) == 2


def test_time_limit_ends_evaluated_and_annealed(tiny_zip, tmp_path):
    # 12 s: several epochs even on 2 busy cores (an epoch of the smoke run is 6 steps), so the
    # history shows the rate rising and falling.
    cfg = smoke(run={"epochs": 1000, "time_limit": 0.2}, schedule={"name": "onecycle"})
    start = time.perf_counter()
    row = T.train(cfg, tiny_zip, tmp_path, progress=False)
    assert time.perf_counter() - start < 90
    assert row["seconds"] >= 11  # ran on to the 12-second limit (rows are logged per epoch)
    assert row["epoch"] < 1000
    # The schedule follows the clock, not the 1000 epochs: it peaks, then anneals.
    lrs = [r["lr"] for r in load_checkpoint(tmp_path / "last.pt")["train"]["history"]]
    assert max(lrs) > 0.5 * cfg.schedule.lr
    assert lrs[-1] < 0.5 * max(lrs)
    assert (tmp_path / "last.pt").is_file()
    assert load_checkpoint(tmp_path / "last.pt")["train"]["step"] == row["step"]


def test_sigkill_then_resume_finishes_the_run(tiny_zip, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "training.train",
        "--preset",
        "smoke",
        "--data",
        str(tiny_zip),
        "--out",
        str(out),
        "--epochs",
        "40",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text()) > 0:
                break
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = load_checkpoint(out / "last.pt")["train"]["step"]
    assert 0 < killed_at < 40 * 6
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    final = load_checkpoint(out / "last.pt")["train"]
    assert final["step"] == 40 * 6  # 48 images / batch 8 = 6 steps per epoch
    assert [r["epoch"] for r in final["history"]][-1] == 40.0


def test_refuses_to_overwrite_a_run(tiny_zip, tmp_path):
    T.train(smoke(run={"epochs": 1}), tiny_zip, tmp_path, progress=False)
    with pytest.raises(T.RunExistsError, match="--resume"):
        T.train(smoke(run={"epochs": 1}), tiny_zip, tmp_path, progress=False)


def test_cli_errors_name_the_problem(tiny_zip, tmp_path, capsys):
    assert T.main(["--preset", "nope", "--data", str(tiny_zip), "--out", str(tmp_path)]) == 2
    assert "valid: sun-vanilla-resnet34" in capsys.readouterr().err
    args = ["--preset", "smoke", "--data", str(tiny_zip), "--out", str(tmp_path / "x")]
    assert T.main([*args, "--set", "optim.lrr=1"]) == 2
    assert "unknown OptimConfig key(s) ['lrr']" in capsys.readouterr().err
    assert T.main(["--preset", "smoke", "--data", str(tmp_path / "none.zip")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_list_presets(capsys):
    assert T.main(["--list-presets"]) == 0
    text = capsys.readouterr().out
    for name in P.PRESETS:
        assert name in text


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_bf16_supported_is_a_bool():
    assert isinstance(T.bf16_supported("cpu"), bool)
    assert isinstance(T.bf16_supported(torch.device("cpu")), bool)


def test_bf16_without_native_support_trains_in_fp32_and_says_so(tiny_zip, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "bf16_supported", lambda device: False)
    with pytest.warns(UserWarning, match=r"no native support .* ~15x slower") as caught:
        T.train(smoke(run={"epochs": 1, "bf16": True}), tiny_zip, tmp_path, progress=False)
    ours = [str(w.message) for w in caught if "bf16" in str(w.message)]
    assert len(ours) == 1
    assert "training in fp32; pass --set run.bf16=false to silence" in ours[0]
    assert load_checkpoint(tmp_path / "last.pt")["config"]["run"]["bf16"] is False
    assert json.loads((tmp_path / "config.json").read_text())["run"]["bf16"] is False


def test_bf16_is_kept_where_native(monkeypatch, recwarn):
    monkeypatch.setattr(T, "bf16_supported", lambda device: True)
    cfg = smoke(run={"bf16": True})
    assert T.resolve_bf16(cfg, torch.device("cpu")) is cfg
    assert not [w for w in recwarn if "bf16" in str(w.message)]


def test_parse_overrides():
    assert parse_overrides(["optim.lr=0.2", "model.stem=cifar", "run.bf16=false"]) == {
        "optim": {"lr": 0.2},
        "model": {"stem": "cifar"},
        "run": {"bf16": False},
    }
    assert parse_overrides(["stem=cifar", "layers=[1,1,1,1]"]) == {
        "stem": "cifar",
        "layers": [1, 1, 1, 1],
    }
    with pytest.raises(ConfigError, match=r"SECTION\.KEY=VALUE"):
        parse_overrides(["optim.lr"])
    with pytest.raises(ConfigError, match=r"SECTION\.KEY=VALUE"):
        parse_overrides(["optim..lr=1"])
    # A key outside any section is refused by the config, with the valid sections listed.
    with pytest.raises(ConfigError, match=r"unknown TrainConfig key\(s\) \['lr'\]; valid: augment"):
        P.get("smoke", **parse_overrides(["lr=0.2"]))


def test_slim_checkpoint_rebuilds_the_same_network(tiny_zip, tmp_path):
    from training.checkpoint import main as checkpoint_main

    cfg = smoke(run={"epochs": 1}, optim={"ema": 0.9})
    T.train(cfg, tiny_zip, tmp_path, progress=False)
    for half in (False, True):
        dst = tmp_path / f"slim-{half}.pt"
        assert (
            checkpoint_main(["slim", str(tmp_path / "last.pt"), str(dst)] + ["--half"] * half) == 0
        )
        full, _ = load_model(tmp_path / "last.pt")
        lean, ckpt = load_model(dst)
        assert "optimizer" not in ckpt
        assert ckpt["slim"]["step"] == 6
        x = torch.randn(2, 3, 64, 64)
        tol = 2e-2 if half else 0.0
        torch.testing.assert_close(lean(x), full(x), rtol=tol, atol=tol)
        assert dst.stat().st_size < (tmp_path / "last.pt").stat().st_size / (4 if half else 2)
    assert checkpoint_main(["slim", str(tmp_path / "missing.pt"), str(dst)]) == 2

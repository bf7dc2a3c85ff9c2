import math

import numpy as np
import pytest
import torch

from training.config import ConfigError, from_dict, replace
from training.presets import PRESETS, TrainConfig, get
from training.regularizers import cutmix, ema_update, mix_batch, mixed_cross_entropy, mixup
from training.schedule import ScheduleConfig, lr_at


def test_step_schedule_anneals_at_milestones():
    cfg = ScheduleConfig(name="step", lr=0.1, milestones=(0.5, 0.75), gamma=0.1)
    assert lr_at(cfg, 0.0) == 0.1
    assert lr_at(cfg, 0.49) == 0.1
    assert lr_at(cfg, 0.5) == pytest.approx(0.01)
    assert lr_at(cfg, 0.99) == pytest.approx(0.001)


def test_cosine_with_warmup():
    cfg = ScheduleConfig(name="cosine", lr=0.2, warmup=0.1)
    assert lr_at(cfg, 0.0) == 0.0
    assert lr_at(cfg, 0.05) == pytest.approx(0.1)
    assert lr_at(cfg, 0.1) == pytest.approx(0.2)
    assert lr_at(cfg, 0.55) == pytest.approx(0.1)
    assert lr_at(cfg, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_onecycle_peaks_then_ends_at_final():
    cfg = ScheduleConfig(name="onecycle", lr=0.4, warmup=0.25, final=0.01)
    assert lr_at(cfg, 0.25) == pytest.approx(0.4)
    assert lr_at(cfg, 0.125) == pytest.approx(0.2)
    assert lr_at(cfg, 1.0) == pytest.approx(0.004)
    assert lr_at(cfg, 2.0) == pytest.approx(0.004)  # clamped past the end


def test_unknown_schedule_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid: constant, step, cosine, onecycle"):
        ScheduleConfig(name="linear")


def test_mixup_blends_images_and_labels():
    x = torch.randn(6, 3, 4, 4)
    y = torch.arange(6)  # label i is image i, so y_b names each image's partner
    out, ya, yb, lam = mixup(x, y, 0.4, np.random.default_rng(1))
    assert 0 <= lam <= 1
    assert torch.equal(ya, y)
    assert sorted(yb.tolist()) == list(range(6))
    torch.testing.assert_close(out, lam * x + (1 - lam) * x[yb])


def test_cutmix_lambda_is_the_kept_area():
    x = torch.zeros(8, 3, 32, 32)
    x[4:] = 1
    y = torch.arange(8)
    out, _, yb, lam = cutmix(x, y, 1.0, np.random.default_rng(3))
    changed = (out != x).any(1).float().mean((1, 2))  # share of each image pasted over
    differs = x[yb].ne(x).flatten(1).any(1)
    assert torch.allclose(changed[differs], torch.full_like(changed[differs], 1 - lam))


def test_mix_batch_off_and_mixed_loss():
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    out, ya, yb, lam = mix_batch(
        x, y, mixup_alpha=0, cutmix_alpha=0, prob=1, rng=np.random.default_rng()
    )
    assert out is x
    assert lam == 1.0
    logits = torch.randn(4, 5)
    blend = mixed_cross_entropy(logits, ya, yb.flip(0), 0.3)
    a = torch.nn.functional.cross_entropy(logits, ya)
    b = torch.nn.functional.cross_entropy(logits, yb.flip(0))
    torch.testing.assert_close(blend, 0.3 * a + 0.7 * b)


def test_ema_update():
    model, ema = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.weight.fill_(0.0)
        model.running_mean.fill_(3.0)
    ema_update(ema, model, decay=0.75)
    torch.testing.assert_close(ema.weight, torch.full((2,), 0.25))
    torch.testing.assert_close(ema.running_mean, torch.full((2,), 3.0))


def test_every_preset_round_trips_through_a_dict():
    import dataclasses

    for name, (doc, cfg) in PRESETS.items():
        assert doc, name
        again = from_dict(TrainConfig, dataclasses.asdict(cfg))
        assert again == cfg, name


def test_preset_overrides_are_strict():
    cfg = get("smoke", optim={"batch_size": 4})
    assert cfg.optim.batch_size == 4
    with pytest.raises(ConfigError, match=r"unknown OptimConfig key\(s\) \['batchsize'\]"):
        get("smoke", optim={"batchsize": 4})
    with pytest.raises(ConfigError, match="unknown preset"):
        get("sun-resnet101-e")
    with pytest.raises(ConfigError, match="valid:"):
        replace(get("smoke"), nonsense=1)
    assert math.isclose(get("sun-final-resnet34").run.epochs, 70.0)

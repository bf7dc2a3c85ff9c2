"""Augmentation: shape, dtype and range kept; parameters drawn per image; one warp that is right."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from training import augment as A

MEAN = (122.0, 114.0, 101.0)
STD = (70.0, 68.0, 72.0)
LOW = torch.tensor([(0 - m) / s for m, s in zip(MEAN, STD, strict=True)]).view(1, 3, 1, 1)
HIGH = torch.tensor([(255 - m) / s for m, s in zip(MEAN, STD, strict=True)]).view(1, 3, 1, 1)


def images(n: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 NHWC images: every op changes them, and none is left-right symmetric."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=g)


def repeated(n: int) -> torch.Tensor:
    return images(1).expand(n, -1, -1, -1).contiguous()


def run(cfg: A.AugmentConfig, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return A.build_augment(cfg, MEAN, STD)(x, torch.Generator().manual_seed(seed))


def distinct(out: torch.Tensor) -> int:
    return len(torch.unique(out.flatten(1), dim=0))


def only(op: str, **kw) -> A.AugmentConfig:
    """Heavy with exactly one op on every image and no flip: that op alone, at random strength."""
    return A.AugmentConfig(preset="heavy", ops=(op,), ops_per_image=(1, 1), flip_p=0.0, **kw)


# --- every preset and every heavy op: shape, dtype, range, per-image draws ------------------------


@pytest.mark.parametrize("preset", A.PRESETS)
def test_preset_keeps_shape_dtype_and_range(preset):
    out = run(A.AugmentConfig(preset=preset), images(32))
    assert out.shape == (32, 3, 64, 64)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(out).all()
    assert (out >= LOW - 1e-5).all()
    assert (out <= HIGH + 1e-5).all()


@pytest.mark.parametrize("op", A.HEAVY_OPS)
def test_each_heavy_op_keeps_range_and_draws_per_image(op):
    x = repeated(16)
    out = run(only(op), x)
    assert out.shape == (16, 3, 64, 64)
    assert out.dtype == torch.float32
    assert (out >= LOW - 1e-5).all()
    assert (out <= HIGH + 1e-5).all()
    # The same image 16 times gives 16 different results, none of them the input.
    assert distinct(out) == 16
    same = (out - A.normalize(x, MEAN, STD)).abs().flatten(1).amax(1) < 1e-3
    assert not same.any()


@pytest.mark.parametrize(("preset", "at_least"), [("ebrahimi", 16), ("heavy", 32)])
def test_same_image_gets_different_augmentations(preset, at_least):
    # ebrahimi has 2 × (1 + 9 × 9) outcomes, 30% uncropped; heavy draws continuous strengths.
    assert distinct(run(A.AugmentConfig(preset=preset), repeated(32))) >= at_least


def test_none_is_exactly_normalize():
    x = images(8)
    assert torch.equal(run(A.AugmentConfig(preset="none"), x), A.normalize(x, MEAN, STD))


def test_normalize_is_the_formula_and_denormalize_inverts_it():
    x = images(4)
    expected = (x.permute(0, 3, 1, 2).float() - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD
    ).view(1, 3, 1, 1)
    out = A.normalize(x, MEAN, STD)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert torch.equal(A.denormalize(out, MEAN, STD), x)


def test_flip_happens_to_about_half_the_images():
    x = repeated(1000)
    out = run(A.AugmentConfig(preset="basic"), x)
    flipped = A.normalize(x.flip(2), MEAN, STD)
    is_flipped = (out == flipped).flatten(1).all(1)
    is_same = (out == A.normalize(x, MEAN, STD)).flatten(1).all(1)
    assert (is_flipped | is_same).all()  # basic only flips, exactly
    assert 0.43 < is_flipped.float().mean() < 0.57


def test_ebrahimi_flips_half_and_crops_seventy_percent():
    x = repeated(1000)
    out = run(A.AugmentConfig(preset="ebrahimi"), x)

    def close(ref):
        return ((out - A.normalize(ref, MEAN, STD)).abs().flatten(1).amax(1) < 1e-3).float()

    plain, flip = close(x).mean(), close(x.flip(2)).mean()
    assert 0.10 < plain < 0.20  # no crop, no flip: 0.3 × 0.5
    assert 0.10 < flip < 0.20  # flip only: 0.3 × 0.5
    assert 0.64 < 1 - plain - flip < 0.76  # cropped: 0.7


def test_heavy_gives_each_image_its_own_subset_of_ops():
    cfg = A.AugmentConfig(preset="heavy", ops_per_image=(2, 4))
    on = A.draw_ops(cfg, 4000, torch.Generator().manual_seed(0))
    chosen = torch.stack([on[op] for op in A.HEAVY_OPS], 1)
    counts = chosen.sum(1)
    assert counts.min() == 2
    assert counts.max() == 4
    assert set(counts.tolist()) == {2, 3, 4}
    assert len(torch.unique(chosen, dim=0)) > 200  # many different subsets
    rate = chosen.float().mean(0)  # each op ~ E[k] / 12 = 0.25 of the images
    assert ((rate > 0.21) & (rate < 0.29)).all()


def test_ops_left_out_of_the_config_never_run():
    on = A.draw_ops(A.AugmentConfig(preset="heavy", ops=("hue", "blur"), ops_per_image=(1, 2)), 50)
    assert not any(on[op].any() for op in A.HEAVY_OPS if op not in ("hue", "blur"))
    assert (on["hue"] | on["blur"]).all()


# --- reproducibility and devices ------------------------------------------------------------------


@pytest.mark.parametrize("preset", A.PRESETS)
def test_same_seed_same_output(preset):
    cfg, x = A.AugmentConfig(preset=preset), images(16)
    assert torch.equal(run(cfg, x, seed=3), run(cfg, x, seed=3))
    if preset != "none":
        assert not torch.equal(run(cfg, x, seed=3), run(cfg, x, seed=4))


def test_strided_input_is_accepted():
    x = images(16)
    view = x[::2]  # not contiguous, as a slice of a bigger array
    cfg = A.AugmentConfig(preset="heavy")
    assert torch.equal(run(cfg, view), run(cfg, view.contiguous()))


def test_masked_and_subset_paths_agree():
    # CPU computes an op only on the chosen images; accelerators compute all and mask.
    x, on = torch.rand(12, 3, 64, 64), torch.arange(12) % 3 == 0
    factor = torch.linspace(-0.3, 0.3, 12)
    subset = A._apply(x, on, A.adjust_hue, factor, subset=True)
    masked = A._apply(x, on, A.adjust_hue, factor, subset=False)
    torch.testing.assert_close(subset, masked)
    assert torch.equal(subset[~on], x[~on])
    assert not torch.allclose(subset[on], x[on])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preset", A.PRESETS)
def test_cuda_batch(preset):
    x = images(16).cuda()
    augment = A.build_augment(preset, MEAN, STD)
    for g in (torch.Generator("cuda").manual_seed(0), torch.Generator().manual_seed(0)):
        out = augment(x, g)
        assert out.is_cuda
        assert out.shape == (16, 3, 64, 64)
        assert (out >= LOW.cuda() - 1e-4).all()
        assert (out <= HIGH.cuda() + 1e-4).all()


# --- geometry: one affine matrix per image, one warp ----------------------------------------------


def test_flip_matrix_through_warp_is_torch_flip():
    x = torch.rand(4, 3, 64, 64)
    flip = torch.tensor([True, False, True, False])
    out = A.warp(x, A.flip_matrix(flip))
    torch.testing.assert_close(out[flip], x[flip].flip(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[~flip], x[~flip], rtol=0, atol=1e-5)


def test_quarter_turn_is_rot90_clockwise():
    x = torch.rand(2, 3, 64, 64)
    out = A.warp(x, A.rotate_matrix(torch.tensor([90.0, -90.0])))
    torch.testing.assert_close(out[0], torch.rot90(x[0], -1, (-2, -1)), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], torch.rot90(x[1], 1, (-2, -1)), rtol=0, atol=1e-5)


def test_translate_moves_by_whole_pixels():
    x = torch.rand(1, 3, 64, 64)
    out = A.warp(x, A.translate_matrix(torch.tensor([0.125]), torch.tensor([-0.25])), "zeros")
    torch.testing.assert_close(out[..., :-16, 8:], x[..., 16:, :-8], rtol=0, atol=1e-5)
    assert out[..., :, :8].abs().max() == 0  # moved in from outside: zero padding


@pytest.mark.parametrize(("ox", "oy"), [(0, 0), (3, 7), (8, 8)])
def test_crop_matrix_is_crop_then_bilinear_resize(ox, oy):
    # Ebrahimi & Abadi §4.2: a 56×56 crop rescaled to 64×64. Inside, the warp equals crop +
    # resize; on the outermost ring it reads the true neighbour instead of repeating the crop's
    # edge.
    x = torch.rand(1, 3, 64, 64)
    ref = F.interpolate(x[..., oy : oy + 56, ox : ox + 56], size=64, mode="bilinear")
    frac, cx, cy = torch.tensor([56 / 64]), torch.tensor([(2 * ox + 56) / 64 - 1]), None
    cy = torch.tensor([(2 * oy + 56) / 64 - 1])
    out = A.warp(x, A.crop_matrix(frac, frac, cx, cy))
    torch.testing.assert_close(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], rtol=0, atol=1e-5)


def test_ebrahimi_crop_is_a_whole_pixel_56_crop_resized():
    x = repeated(8)
    out = run(A.AugmentConfig(preset="ebrahimi", flip_p=0.0, crop_p=1.0), x)
    f = A.to_float_nchw(x[:1])
    refs = torch.cat(
        [
            F.interpolate(f[..., oy : oy + 56, ox : ox + 56], size=64, mode="bilinear")
            for oy in range(9)
            for ox in range(9)
        ]
    )
    refs = A.standardize(refs, MEAN, STD)[..., 1:-1, 1:-1].flatten(1)  # (81, ·)
    err = (out[..., 1:-1, 1:-1].flatten(1)[:, None] - refs[None]).abs().amax(2)  # (8, 81)
    assert (err.amin(1) < 1e-4).all()  # each output is one of the 81 crops
    assert len(set(err.argmin(1).tolist())) > 4  # at offsets drawn per image


def test_composed_matrices_cancel():
    n = 3
    angle, sx = torch.tensor([10.0, -25.0, 40.0]), torch.tensor([0.8, 1.0, 1.3])
    m = A.rotate_matrix(angle) @ A.rotate_matrix(-angle) @ A.scale_matrix(sx, sx)
    m = m @ A.scale_matrix(1 / sx, 1 / sx) @ A.flip_matrix(torch.ones(n, dtype=torch.bool))
    m = m @ A.flip_matrix(torch.ones(n, dtype=torch.bool))
    torch.testing.assert_close(m, torch.eye(3).repeat(n, 1, 1))


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_heavy_with_no_ops_is_identity_or_exact_flip(flip_p):
    # Every geometric op at its identity parameters goes through the one warp unchanged.
    x = images(8)
    cfg = A.AugmentConfig(preset="heavy", ops_per_image=(0, 0), flip_p=flip_p)
    ref = A.normalize(x.flip(2) if flip_p else x, MEAN, STD)
    torch.testing.assert_close(run(cfg, x), ref, rtol=0, atol=1e-3)


# --- configuration --------------------------------------------------------------------------------


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match="none, basic, ebrahimi, heavy"):
        A.AugmentConfig(preset="medium")
    with pytest.raises(ValueError, match="valid presets"):
        A.build_augment("autoaugment", MEAN, STD)


def test_unknown_config_key_names_the_valid_ones():
    with pytest.raises(ValueError, match="rotation") as err:
        A.AugmentConfig.from_dict({"preset": "heavy", "rotation": 30})
    assert "valid:" in str(err.value)
    assert " rotate," in str(err.value)
    assert " ops_per_image," in str(err.value)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"ops": ("rotate", "sharpen")}, "distinct names from crop, scale"),
        ({"ops": ("rotate", "rotate")}, "distinct names"),
        ({"ops_per_image": (3, 2)}, "low <= high"),
        ({"ops": ("rotate",), "ops_per_image": (1, 2)}, "exceeds the 1 ops"),
        ({"flip_p": 1.5}, "flip_p must be in"),
        ({"rotate": -5.0}, "rotate is a ± bound"),
        ({"crop_frac": (0.0, 0.9)}, "crop_frac must lie in"),
        ({"scale": (0.0, 1.1)}, "scale must be positive"),
        ({"padding_mode": "wrap"}, "zeros, border, reflection"),
    ],
)
def test_bad_values_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        A.AugmentConfig(preset="heavy", **bad)


def test_config_round_trips_through_a_dict_and_is_frozen():
    cfg = A.AugmentConfig.from_dict({"preset": "heavy", "ops_per_image": [1, 3], "rotate": 10.0})
    assert cfg.ops_per_image == (1, 3)
    assert A.AugmentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.preset = "none"
    assert A.build_augment({"preset": "basic"}, MEAN, STD).cfg == A.AugmentConfig(preset="basic")


def test_input_must_be_uint8_nhwc():
    augment = A.build_augment("basic", MEAN, STD)
    with pytest.raises(ValueError, match="NHWC"):
        augment(images(2).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="uint8"):
        augment(images(2).float())


# --- CLI ------------------------------------------------------------------------------------------


def test_grid_cli_on_the_fixture(tiny_root, tmp_path, capsys):
    out = tmp_path / "grid.png"
    argv = ["--data", str(tiny_root), "--out", str(out), "--sources", "4", "--per-source", "2"]
    assert A.main([*argv, "--per-row", "2"]) == 0
    with Image.open(out) as im:
        # 2 groups of 3 tiles (64 px × 2 zoom, 2 px gaps) per row, 2 rows.
        assert im.size == (2 * (3 * 130 - 2) + 10 + 4, 2 * (128 + 10) + 2)
    assert "4 sources" in capsys.readouterr().out


def test_bench_reports_every_preset(capsys):
    rates = A.bench(batch=4, iters=1, repeats=1)
    assert set(rates) == set(A.PRESETS)
    assert all(r > 0 for r in rates.values())
    assert "heavy" in capsys.readouterr().out

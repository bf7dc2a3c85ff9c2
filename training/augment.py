"""Batched, per-image data augmentation on the training device, ending in the shared normalisation.

Input: a uint8 batch (B, H, W, 3) NHWC, as training/data.py stores images (64×64), on any device.
Output: float32 (B, 3, H, W) in channels_last memory, standardised with the training set's
per-channel mean and std (0..255 units) by `normalize`, the function evaluation also uses (the
exported graph does the same arithmetic inside).

"Sun" is L. Sun, "ResNet on Tiny ImageNet"; "Ebrahimi & Abadi" is M. S. Ebrahimi and H. K. Abadi,
"Study of Residual Networks for Image Recognition" (README, References).

Presets (`AugmentConfig.preset`):
  none      `normalize` only.
  basic     global mean subtraction (that is `normalize`) and a horizontal flip with p = 0.5
            (Sun §5.2).
  ebrahimi  flip with p = 0.5, then with p = 0.7 a random 56×56 crop rescaled to 64×64
            (Ebrahimi & Abadi §4.2).
  heavy     flip with p = 0.5, then each image its own random subset of `ops` (k of them, k drawn
            per image in `ops_per_image`), each at its own random intensity (Sun §6).

Every draw is per image and vectorised over the batch: no Python loop over images. The geometric
part (flip, crop, scale, translate, rotate, shear) is composed into one affine matrix per image and
resampled once, which is cheaper than one warp per op and blurs the image only once. Colour ops
and blur come from kornia.enhance / kornia.filters with one factor per image; noise and cutout are
plain tensor math with per-image masks.

    python -m training.augment --data PATH --preset heavy --out grid.png   # like Figure 12
    python -m training.augment --bench                                     # img/s per preset
"""

from __future__ import annotations

import functools
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.enhance import (
    adjust_brightness,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation,
)
from kornia.filters import gaussian_blur2d
from torch import Tensor

from common.cli import Parser, fail
from training.config import ConfigError, from_dict, to_dict
from training.data import DataError

PRESETS = ("none", "basic", "ebrahimi", "heavy")
GEOMETRIC_OPS = ("crop", "scale", "translate", "rotate", "shear")
PHOTOMETRIC_OPS = ("brightness", "contrast", "saturation", "hue", "blur", "noise", "cutout")
# Sun §6 uses twelve transforms ("flipping, cropping, scaling, shifting and etc."). Here the
# flip is drawn for every heavy image (p = flip_p, as in §5.2) and k of these twelve on top, so 13
# in all with cutout; leave one out of `ops` for the paper's twelve exactly.
HEAVY_OPS = GEOMETRIC_OPS + PHOTOMETRIC_OPS
PADDING_MODES = ("zeros", "border", "reflection")

Tuple3 = tuple[float, float, float]


@dataclass(frozen=True)
class AugmentConfig:
    """What to augment and how strongly. Ranges are (low, high), drawn uniformly per image.

    The heavy ranges follow Sun §6's criterion: "the augmented images have to be obvious to
    human eyes, otherwise they will be too strong for our networks". The paper gives no numbers;
    these are moderate bounds, checked by eye on grids of real 64×64 images (`--out grid.png`),
    where even two or three ops at their bounds leave the object recognisable.
    """

    preset: str = "basic"
    flip_p: float = 0.5  # basic, ebrahimi, heavy: horizontal flip (Sun §5.2, Ebrahimi & Abadi §4.2)
    # ebrahimi (Ebrahimi & Abadi §4.2): "with some probability p ... crops to 56 × 56 ... p = 0.7"
    crop_p: float = 0.7
    crop_size: int = 56
    # heavy (Sun §6): "a random selection of several transformations" per image
    ops: tuple[str, ...] = HEAVY_OPS
    ops_per_image: tuple[int, int] = (2, 4)
    crop_frac: tuple[float, float] = (0.75, 0.95)  # kept side; ebrahimi's 56/64 = 0.875 is inside
    scale: tuple[float, float] = (0.85, 1.15)  # per axis, so the aspect changes too
    translate: float = 0.1  # ± fraction of the side (±6 px): the object stays in frame
    rotate: float = 20.0  # ± degrees: photos are rarely tilted more than this
    shear: float = 12.0  # ± degrees
    brightness: float = 0.15  # ± added to [0, 1] pixels: no region saturates to white or black
    contrast: tuple[float, float] = (0.65, 1.35)
    saturation: tuple[float, float] = (0.5, 1.5)  # 0 would be grayscale, 2 garish
    hue: float = 0.05  # ± fraction of the colour circle (18°): skies stay blue, grass green
    blur_sigma: tuple[float, float] = (0.4, 1.1)  # px: edges soften but shapes stay
    noise_std: tuple[float, float] = (0.01, 0.05)  # on [0, 1] pixels: up to ±13/255 per pixel
    cutout: tuple[int, int] = (8, 20)  # square side in px: hides a part, never the whole object
    padding_mode: str = "reflection"  # what a warp shows outside the image; no black corners

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ConfigError(
                f"unknown augment preset {self.preset!r}; valid presets: {', '.join(PRESETS)}"
            )
        bad = [op for op in self.ops if op not in HEAVY_OPS]
        if bad or len(set(self.ops)) != len(self.ops):
            raise ConfigError(
                f"augment ops must be distinct names from {', '.join(HEAVY_OPS)}; got {self.ops}"
            )
        if self.padding_mode not in PADDING_MODES:
            raise ConfigError(f"padding_mode must be one of {', '.join(PADDING_MODES)}")
        for name in ("flip_p", "crop_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.crop_size < 1:
            raise ConfigError(f"crop_size must be positive, got {self.crop_size}")
        for name in ("translate", "rotate", "shear", "brightness", "hue"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"{name} is a ± bound and must be >= 0, got {getattr(self, name)}"
                )
        ranges = ("ops_per_image", "crop_frac", "scale", "contrast", "saturation")
        for name in (*ranges, "blur_sigma", "noise_std", "cutout"):
            value = getattr(self, name)
            if len(value) != 2 or not 0 <= value[0] <= value[1]:
                raise ConfigError(f"{name} must be (low, high) with 0 <= low <= high, got {value}")
        if self.ops_per_image[1] > len(self.ops):
            raise ConfigError(f"ops_per_image {self.ops_per_image} exceeds the {len(self.ops)} ops")
        if not 0 < self.crop_frac[0] <= self.crop_frac[1] <= 1:
            raise ConfigError(f"crop_frac must lie in (0, 1], got {self.crop_frac}")
        if self.scale[0] <= 0:
            raise ConfigError(f"scale must be positive, got {self.scale}")

    @classmethod
    def from_dict(cls, d: Mapping) -> AugmentConfig:
        """From JSON/YAML/CLI: an unknown key is an error naming the valid ones; lists → tuples."""
        return from_dict(cls, d)

    def to_dict(self) -> dict:
        return to_dict(self)


# --- normalisation: shared with eval and serving ------------------------------------------------


def _check_batch(x: Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8 batch (B, H, W, 3) NHWC, got {x.dtype} {tuple(x.shape)}; "
            "for an NCHW uint8 batch pass x.permute(0, 2, 3, 1)"
        )


def to_float_nchw(x: Tensor) -> Tensor:
    """uint8 (B, H, W, 3) → float32 (B, 3, H, W) in [0, 1]. The permuted view of an NHWC tensor is
    already channels_last, so this is one conversion and no copy of the layout."""
    _check_batch(x)
    return x.permute(0, 3, 1, 2).float().div_(255)


@functools.lru_cache(maxsize=32)
def _per_channel(values: Tuple3, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(1, 3, 1, 1) constants, made once per device: a fresh host-to-device copy every batch would
    wait for the GPU's queue to drain."""
    return torch.tensor(values, dtype=dtype, device=device).view(1, 3, 1, 1)


def standardize(x: Tensor, mean: Tuple3, std: Tuple3) -> Tensor:
    """float (B, 3, H, W) in [0, 1] → (255·x − mean) / std per channel, channels_last memory."""
    shift = _per_channel(tuple(m / 255 for m in mean), x.dtype, x.device)
    scale = _per_channel(tuple(255 / s for s in std), x.dtype, x.device)
    return (x.contiguous(memory_format=torch.channels_last) - shift) * scale


def normalize(x: Tensor, mean: Tuple3, std: Tuple3) -> Tensor:
    """uint8 (B, H, W, 3) → float32 (B, 3, H, W) standardised: what the model sees at eval and
    serving time, and what every augmentation preset ends with (Sun §5.2's mean
    subtraction)."""
    return standardize(to_float_nchw(x), mean, std)


def denormalize(x: Tensor, mean: Tuple3, std: Tuple3) -> Tensor:
    """The inverse of `normalize` for display: float (B, 3, H, W) → uint8 (B, H, W, 3)."""
    scale = _per_channel(tuple(std), x.dtype, x.device)
    shift = _per_channel(tuple(mean), x.dtype, x.device)
    return (x * scale + shift).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


# --- per-image random draws ----------------------------------------------------------------------


def _rand(shape, g: torch.Generator | None, device) -> Tensor:
    """U(0, 1) drawn on the generator's device and moved to `device`, so one CPU generator can
    drive a CUDA batch reproducibly (a generator on the batch's device avoids the copy)."""
    where = g.device if g is not None else device
    return torch.rand(shape, generator=g, device=where).to(device)


def _uniform(lo: float, hi: float, n: int, g, device) -> Tensor:
    return lo + (hi - lo) * _rand(n, g, device)


def _randint(lo: int, hi: int, n: int, g, device) -> Tensor:
    """Integers in [lo, hi] inclusive, as float."""
    return (lo + (hi - lo + 1) * _rand(n, g, device)).floor().clamp_(max=hi)


def draw_ops(cfg: AugmentConfig, n: int, g=None, device="cpu") -> dict[str, Tensor]:
    """For each op of HEAVY_OPS a (n,) bool mask: image i gets k_i ∈ ops_per_image of cfg.ops,
    a uniformly random subset (ranking random scores picks k_i distinct ops at once)."""
    k = _randint(*cfg.ops_per_image, n, g, device)
    rank = _rand((n, len(cfg.ops)), g, device).argsort(1).argsort(1)
    chosen = rank < k[:, None]
    off = torch.zeros(n, dtype=torch.bool, device=device)
    return {op: chosen[:, cfg.ops.index(op)] if op in cfg.ops else off for op in HEAVY_OPS}


# --- geometry: one affine matrix per image, one warp ---------------------------------------------
# Matrices are (B, 3, 3) and map OUTPUT to INPUT coordinates, normalised to [-1, 1] with
# align_corners=False (F.affine_grid's convention), so a forward chain "flip, then scale, ...,
# then crop" samples through flip @ scale @ ... @ crop.


def _eye(n: int, device) -> Tensor:
    return torch.eye(3, device=device).repeat(n, 1, 1)


def flip_matrix(flip: Tensor) -> Tensor:
    """Mirror left-right where `flip` (B,) is true."""
    m = _eye(len(flip), flip.device)
    m[:, 0, 0] = 1 - 2 * flip.float()
    return m


def crop_matrix(frac_x: Tensor, frac_y: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """Show the window of relative size frac centred at (cx, cy), stretched to the whole output."""
    m = _eye(len(frac_x), frac_x.device)
    m[:, 0, 0], m[:, 1, 1], m[:, 0, 2], m[:, 1, 2] = frac_x, frac_y, cx, cy
    return m


def scale_matrix(sx: Tensor, sy: Tensor) -> Tensor:
    """Enlarge the image by (sx, sy) about its centre."""
    return crop_matrix(1 / sx, 1 / sy, torch.zeros_like(sx), torch.zeros_like(sx))


def translate_matrix(tx: Tensor, ty: Tensor) -> Tensor:
    """Move the image by (tx, ty) fractions of its side (the normalised side is 2 long)."""
    return crop_matrix(torch.ones_like(tx), torch.ones_like(tx), -2 * tx, -2 * ty)


def rotate_matrix(degrees: Tensor) -> Tensor:
    """Rotate about the centre; positive is clockwise on screen (y points down)."""
    a = torch.deg2rad(degrees)
    m = _eye(len(a), a.device)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a.cos(), a.sin(), -a.sin(), a.cos()
    return m


def shear_matrix(degrees: Tensor) -> Tensor:
    """Shear along x: x' = x + tan(angle)·y."""
    m = _eye(len(degrees), degrees.device)
    m[:, 0, 1] = -torch.tan(torch.deg2rad(degrees))
    return m


def warp(x: Tensor, matrix: Tensor, padding_mode: str = "reflection") -> Tensor:
    """Resample each image of x (B, C, H, W) once, bilinearly, through its own (B, 3, 3) matrix."""
    theta = matrix[:, :2].to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, "bilinear", padding_mode=padding_mode, align_corners=False)


# --- the presets ---------------------------------------------------------------------------------


def _basic(x: Tensor, cfg: AugmentConfig, g, mean) -> Tensor:
    # Sun §5.2: flip with p = 0.5. An exact flip needs no resampling.
    flip = _rand(len(x), g, x.device) < cfg.flip_p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _ebrahimi(x: Tensor, cfg: AugmentConfig, g, mean) -> Tensor:
    # Ebrahimi & Abadi §4.2: flip with p = 0.5, then with p = 0.7 a 56×56 crop at a random
    # whole-pixel offset, rescaled to 64×64: one warp does both, and equals crop + bilinear resize.
    n, dev = len(x), x.device
    (h, w), size = x.shape[-2:], cfg.crop_size
    flip = _rand(n, g, dev) < cfg.flip_p
    crop = _rand(n, g, dev) < cfg.crop_p
    ox, oy = _randint(0, max(w - size, 0), n, g, dev), _randint(0, max(h - size, 0), n, g, dev)
    one, zero = torch.ones(n, device=dev), torch.zeros(n, device=dev)
    fx, fy = torch.where(crop, min(size / w, 1.0), one), torch.where(crop, min(size / h, 1.0), one)
    cx = torch.where(crop, (2 * ox + size) / w - 1, zero)  # window centre, normalised
    cy = torch.where(crop, (2 * oy + size) / h - 1, zero)
    return warp(x, flip_matrix(flip) @ crop_matrix(fx, fy, cx, cy), cfg.padding_mode)


def _heavy_geometry(x: Tensor, cfg: AugmentConfig, on: dict, g) -> Tensor:
    n, dev = len(x), x.device

    def draw(op, lo, hi, identity):  # drawn for all images so the RNG stream is fixed-length
        return torch.where(on[op], _uniform(lo, hi, n, g, dev), identity)

    flip = _rand(n, g, dev) < cfg.flip_p
    frac = draw("crop", *cfg.crop_frac, 1.0)
    cx, cy = (1 - frac) * _uniform(-1, 1, n, g, dev), (1 - frac) * _uniform(-1, 1, n, g, dev)
    sx, sy = draw("scale", *cfg.scale, 1.0), draw("scale", *cfg.scale, 1.0)
    t = cfg.translate
    tx, ty = draw("translate", -t, t, 0.0), draw("translate", -t, t, 0.0)
    angle = draw("rotate", -cfg.rotate, cfg.rotate, 0.0)
    shear = draw("shear", -cfg.shear, cfg.shear, 0.0)
    m = flip_matrix(flip) @ scale_matrix(sx, sy) @ shear_matrix(shear) @ rotate_matrix(angle)
    m = m @ translate_matrix(tx, ty) @ crop_matrix(frac, frac, cx, cy)
    return warp(x, m, cfg.padding_mode)


def _apply(x: Tensor, on: Tensor, fn, *params: Tensor, subset: bool | None = None) -> Tensor:
    """`fn(images, *params)` on the images where `on` is true, the others unchanged. On the CPU
    only the chosen images are computed (a heavy image gets ~3 of 12 ops, so most of each op's
    work is skipped, and the host sync of `nonzero` is free there); on an accelerator all are
    computed and masked, which keeps the step free of host syncs and costs little."""
    if subset is None:
        subset = x.device.type == "cpu"
    if subset:
        idx = on.nonzero().squeeze(1)
        if len(idx) == 0:
            return x
        return x.index_copy(0, idx, fn(x[idx], *(p[idx] for p in params)).to(x.dtype))
    return torch.where(on.view(-1, 1, 1, 1), fn(x, *params), x)


def _heavy_colour(x: Tensor, cfg: AugmentConfig, on: dict, g) -> Tensor:
    n, dev = len(x), x.device
    b, h = cfg.brightness, cfg.hue
    x = _apply(x, on["brightness"], adjust_brightness, _uniform(-b, b, n, g, dev))
    contrast = _uniform(*cfg.contrast, n, g, dev)
    x = _apply(x, on["contrast"], adjust_contrast_with_mean_subtraction, contrast)
    x = _apply(x, on["saturation"], adjust_saturation, _uniform(*cfg.saturation, n, g, dev))
    return _apply(x, on["hue"], adjust_hue, _uniform(-h, h, n, g, dev) * 2 * math.pi)  # radians


def _blur(x: Tensor, sigma: Tensor, kernel: int) -> Tensor:
    return gaussian_blur2d(x, kernel, sigma[:, None].expand(len(x), 2))


def _noise(x: Tensor, std: Tensor, g) -> Tensor:
    noise = torch.randn(x.shape, generator=g, device=g.device if g is not None else x.device)
    return x + std.view(-1, 1, 1, 1) * noise.to(x.device)


def _cutout(x: Tensor, on: Tensor, side: Tensor, cx: Tensor, cy: Tensor, mean: Tuple3) -> Tensor:
    # One square per image centred anywhere in it (DeVries & Taylor 2017), filled with the
    # training mean, so it is zero after normalisation: no information, no new colour.
    (h, w), dev = x.shape[-2:], x.device
    xs, ys = torch.arange(w, device=dev) + 0.5, torch.arange(h, device=dev) + 0.5
    inside_x = (xs[None] - cx[:, None]).abs() < side[:, None] / 2  # (B, W)
    inside_y = (ys[None] - cy[:, None]).abs() < side[:, None] / 2  # (B, H)
    hole = inside_y[:, :, None] & inside_x[:, None, :] & on.view(-1, 1, 1)
    fill = _per_channel(tuple(m / 255 for m in mean), x.dtype, dev)
    return torch.where(hole[:, None], fill, x)


def _heavy_pixels(x: Tensor, cfg: AugmentConfig, on: dict, g, mean: Tuple3) -> Tensor:
    n, (h, w), dev = len(x), x.shape[-2:], x.device
    if "blur" in cfg.ops:
        kernel = 2 * math.ceil(2 * cfg.blur_sigma[1]) + 1  # ±2σ covers 95% of the weight
        sigma = _uniform(*cfg.blur_sigma, n, g, dev)
        x = _apply(x, on["blur"], lambda im, s: _blur(im, s, kernel), sigma)
    if "noise" in cfg.ops:
        std = _uniform(*cfg.noise_std, n, g, dev)
        x = _apply(x, on["noise"], lambda im, s: _noise(im, s, g), std)
    if "cutout" in cfg.ops:
        side = _uniform(*cfg.cutout, n, g, dev)
        cx, cy = _uniform(0, w, n, g, dev), _uniform(0, h, n, g, dev)
        x = _cutout(x, on["cutout"], side, cx, cy, mean)
    return x


def _heavy(x: Tensor, cfg: AugmentConfig, g, mean) -> Tensor:
    # Sun §6: each image its own subset of the ops, each at its own intensity. Geometry first
    # (one warp), then colour, then blur / noise / cutout, so the hole stays a clean square.
    on = draw_ops(cfg, len(x), g, x.device)
    x = _heavy_geometry(x, cfg, on, g)
    x = _heavy_colour(x, cfg, on, g)
    return _heavy_pixels(x, cfg, on, g, mean)


_PRESET_FNS = {"basic": _basic, "ebrahimi": _ebrahimi, "heavy": _heavy}


class Augment:
    """`augment(x_uint8_nhwc, generator=None)` → standardised float32 (B, 3, H, W), channels_last.

    A generator makes a run reproducible; put it on the batch's device (torch.Generator("cuda"))
    so the noise tensor is not drawn on the CPU and copied."""

    def __init__(self, cfg: AugmentConfig, mean: Tuple3, std: Tuple3):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must be 3 values, std > 0; got {mean}, {std}")
        self.cfg, self.mean, self.std = cfg, tuple(mean), tuple(std)

    @torch.no_grad()
    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.cfg.preset == "none":
            return normalize(x, self.mean, self.std)
        f = _PRESET_FNS[self.cfg.preset](to_float_nchw(x), self.cfg, generator, self.mean)
        return standardize(f.clamp_(0, 1), self.mean, self.std)

    def __repr__(self) -> str:
        return f"Augment({self.cfg}, mean={self.mean}, std={self.std})"


def build_augment(
    cfg: AugmentConfig | Mapping | str, mean: Tuple3, std: Tuple3
) -> Callable[..., Tensor]:
    """The training-time transform for `cfg` (a config, its dict, or a preset name)."""
    if isinstance(cfg, str):
        cfg = AugmentConfig(preset=cfg)
    elif isinstance(cfg, Mapping):
        cfg = AugmentConfig.from_dict(cfg)
    return Augment(cfg, mean, std)


# --- CLI: a sample grid like Sun's Figure 12, and a throughput benchmark --------------------


def make_grid(images, augment, *, per_source=4, per_row=3, zoom=2, generator=None):
    """A PIL image: rows of `per_row` groups, each a source image (framed) and `per_source`
    augmented versions of it. `images` is uint8 (N, H, W, 3), numpy or torch."""
    from PIL import Image

    src = torch.as_tensor(images)
    n, h, w = src.shape[:3]
    aug = augment(src.repeat_interleave(per_source, 0), generator)
    aug = denormalize(aug, augment.mean, augment.std).view(n, per_source, h, w, 3)
    tiles = torch.cat([src[:, None], aug], 1)  # (N, 1 + per_source, H, W, 3)
    tw, th, gap, group_gap = w * zoom, h * zoom, 2, 10
    group_w = (1 + per_source) * (tw + gap) - gap
    rows = math.ceil(n / per_row)
    sheet = Image.new(
        "RGB",
        (per_row * (group_w + group_gap) - group_gap + 2 * gap, rows * (th + group_gap) + gap),
        (255, 255, 255),
    )
    for i in range(n):  # display only: a loop over a handful of tiles is fine here
        x0 = gap + (i % per_row) * (group_w + group_gap)
        y0 = gap + (i // per_row) * (th + group_gap)
        sheet.paste((0, 0, 0), (x0 - gap, y0 - gap, x0 + tw + gap, y0 + th + gap))  # frame
        for j, tile in enumerate(tiles[i]):
            im = Image.fromarray(tile.cpu().numpy()).resize((tw, th), Image.NEAREST)
            sheet.paste(im, (x0 + j * (tw + gap), y0))
    return sheet


def bench(batch=256, iters=10, repeats=3, device="cpu", presets=PRESETS) -> dict[str, float]:
    """Images per second of each preset on random uint8 data: the best of `repeats` timings of
    `iters` batches (a shared machine only ever slows a run down), printed with the median."""
    x = torch.randint(0, 256, (batch, 64, 64, 3), dtype=torch.uint8, device=device)
    g = torch.Generator(device).manual_seed(0)
    sync = torch.cuda.synchronize if x.is_cuda else lambda: None
    best = {}
    for preset in presets:
        augment = build_augment(preset, (120.0, 110.0, 100.0), (60.0, 60.0, 60.0))
        augment(x, g)  # warm-up
        rates = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            for _ in range(iters):
                augment(x, g)
            sync()
            rates.append(batch * iters / (time.perf_counter() - t0))
        best[preset] = max(rates)
        print(
            f"{preset:>9}: {max(rates):8.0f} img/s best, {statistics.median(rates):8.0f} median"
            f"  (batch {batch}, {device}, {torch.get_num_threads()} threads)"
        )
    return best


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m training.augment", description=__doc__.split("\n")[0])
    p.add_argument("--data", help="tiny-imagenet-200.zip or folder (for --out)")
    p.add_argument("--preset", default="heavy", choices=PRESETS)
    p.add_argument("--out", help="write a grid of augmented samples (PNG) here")
    p.add_argument("--classes", type=int, help="load only the first K classes")
    p.add_argument("--per-class", type=int, help="load at most M images per class")
    p.add_argument("--sources", type=int, default=15, help="source images in the grid")
    p.add_argument("--per-source", type=int, default=4, help="augmented versions of each")
    p.add_argument("--per-row", type=int, default=3, help="source images per grid row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bench", action="store_true", help="print img/s of every preset")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if not (args.bench or args.out):
        p.error("nothing to do: give --bench and/or --out")
    if args.out and not args.data:
        p.error("--out needs --data")
    try:
        run(args)
    except (ConfigError, DataError) as e:
        return fail(e)
    return 0


def run(args) -> None:
    if args.bench:
        bench(args.batch, args.iters, args.repeats, args.device)
    if args.out:
        from training.data import load  # lazily: the benchmark needs no dataset

        ds = load(args.data, classes=args.classes, per_class=args.per_class)
        g = torch.Generator().manual_seed(args.seed)
        pick = torch.randperm(len(ds.train.y), generator=g)[: args.sources]
        augment = build_augment(args.preset, ds.mean, ds.std)
        sheet = make_grid(
            ds.train.x[pick.numpy()],
            augment,
            per_source=args.per_source,
            per_row=args.per_row,
            generator=g,
        )
        sheet.save(args.out)
        names = ", ".join(ds.names[int(ds.train.y[i])] for i in pick)
        print(f"wrote {args.out}: {args.preset}, {len(pick)} sources ({names})")


if __name__ == "__main__":
    sys.exit(main())

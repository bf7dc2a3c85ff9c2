"""A class-activation map drawn over the image it explains: numpy and Pillow only.

The service's `/explain?format=png`, the client's `Explanation.overlay()` and the demo page
(serving/ui/index.html, in JavaScript) draw it the same way, so a map looks the same wherever it
is shown: the h×w map is upsampled bilinearly to the image's own size (half-pixel centres, as
torch's `interpolate(align_corners=False)`), scaled from its minimum to its maximum (a flat map is
drawn all "low"), coloured with Turbo (Mikhailov, Google 2019; Ruofei Du's polynomial fit), and
blended over the image at `alpha`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

ALPHA = 0.5
# Ruofei Du's degree-5 polynomial fit of Turbo, per channel, lowest power first (Apache-2.0).
_TURBO = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)


def turbo_table() -> np.ndarray:
    """The colour scale as 256 RGB rows, uint8: row 0 is "low" (dark blue), 255 "high" (red)."""
    x = np.linspace(0.0, 1.0, 256)[:, None] ** np.arange(6)
    return np.round(255 * np.clip(x @ _TURBO.T, 0, 1)).astype(np.uint8)


TURBO = turbo_table()


def _axis(n: int, src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.clip((np.arange(n) + 0.5) * src / n - 0.5, 0, src - 1)
    i0 = np.floor(s).astype(np.int64)
    return i0, np.minimum(i0 + 1, src - 1), (s - i0)


def upsample(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of an (h, w) map to (height, width), half-pixel centres."""
    cam = np.asarray(cam, np.float32)
    y0, y1, fy = _axis(height, cam.shape[0])
    x0, x1, fx = _axis(width, cam.shape[1])
    top = cam[y0][:, x0] * (1 - fx) + cam[y0][:, x1] * fx
    bottom = cam[y1][:, x0] * (1 - fx) + cam[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def normalise(values: np.ndarray) -> np.ndarray:
    """`values` scaled to 0..1 from their minimum to their maximum; a flat map is all 0."""
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = ALPHA) -> Image.Image:
    """`image` (RGB, upright) with the coloured map blended over it, at the image's size."""
    # float32: a megapixel in 12 MB a plane rather than 24 (the service draws at most
    # inference.preprocess.OVERLAY_MAX_SIDE a side)
    rgb = np.asarray(image.convert("RGB"), np.float32)
    heat = normalise(upsample(cam, rgb.shape[0], rgb.shape[1]))
    colour = TURBO[np.round(heat * 255).astype(np.uint8)].astype(np.float32)
    return Image.fromarray(np.round((1 - alpha) * rgb + alpha * colour).astype(np.uint8), "RGB")


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()

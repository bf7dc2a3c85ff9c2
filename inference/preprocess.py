"""Uploaded bytes → the model's 64×64 RGB uint8 input, or an ImageError that names the problem.

Pure PIL and numpy. For a 64×64 file with no alpha and no EXIF orientation (every Tiny ImageNet
image) this is exactly the training data layer's decode (training/data.py `decode_image`: PIL
open, load, convert("RGB")), so served predictions match `training.evaluate`. Beyond that:

- formats: JPEG (and MPO, phones' multi-picture JPEG), PNG, WebP, BMP, GIF; animated GIF and
  WebP give their first frame. Anything else is refused by format name, never guessed at.
- EXIF orientation is applied, so a phone photo is classified the way it is displayed.
- alpha (RGBA, LA, PA, a palette or PNG transparency key) is composited on white, as a browser
  shows a transparent image, rather than dropped, which would expose whatever colour the
  transparent pixels happen to hold (often black).
- 16-bit grayscale is scaled to 8 bits (PIL's own convert would clip it to white).
- other sizes are resized to 64×64 with PIL's bicubic filter (contract.RESIZE_FILTER), which
  antialiases when it shrinks. A large JPEG is decoded at a reduced scale first (`draft`, no
  smaller than 256 a side), and a large image of any format box-reduced (`reducing_gap`): the
  cost of a phone photo is then its file, not its 12 million pixels. The aspect ratio is not
  kept: the training images were squashed to 64×64 the same way.
- the pixel count is checked from the header before decoding: a decompression bomb is refused
  without allocating its pixels.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from inference.contract import IMAGE_SIZE, RESIZE_FILTER

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC}[RESIZE_FILTER]
# JPEG draft decoding stops at four times the model's side: a 4000×3000 photo still decodes at
# 1/8 scale, while a 500×375 one (which draft would halve, moving pixels by 1.4/255 on average
# and changing 2.3% of top-1 answers on 1,000 val images, bench/decode.py) decodes in full.
# The box reduction (REDUCING_GAP as PIL's documentation recommends) only for images still large
# after decoding: on a drafted 4000×3000 JPEG it would add 0.16/255
# of mean difference to the draft's 0.11 (40 val images upscaled, bench/decode.py's photos).
DRAFT_MIN = 4 * IMAGE_SIZE
REDUCING_GAP = 3.0
REDUCE_FROM = 1024
# The long side of the image an overlay is drawn on (`/explain?format=png`): drawn at a 40 MP
# upload's own size, one overlay took 13-25 s and 4.6 GB, and 8 at once had the worker killed.
OVERLAY_MAX_SIDE = 1024
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

# How files of the accepted formats start: a file that does but fails to open is damaged, not
# "not an image".
SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}
# Formats people do send that this service does not accept, to name them in the refusal.
OTHER_SIGNATURES = {
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"8BPS": "PSD",
    b"%PDF": "PDF",
    b"\x00\x00\x01\x00": "ICO",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
    b"\xff\x4f\xff\x51": "JPEG 2000",
    b"qoif": "QOI",
}
ISO_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}


class ImageError(ValueError):
    """An upload that is not a usable image; `code` is the API's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def sniff(data: bytes) -> str | None:
    """The format the first bytes announce, accepted or not; None if they announce none."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for table in (SIGNATURES, OTHER_SIGNATURES):
        for magic, name in table.items():
            if data.startswith(magic):
                return name
    if data[4:8] == b"ftyp" and data[8:12] in ISO_BRANDS:
        return ISO_BRANDS[data[8:12]]
    head = data[:1024].lstrip().lower()
    if head.startswith(b"<") and b"<svg" in head:
        return "SVG"
    return None


def _refuse_unopenable(data: bytes) -> ImageError:
    fmt = sniff(data)
    if fmt in FORMATS:
        return ImageError(
            "truncated_image", f"the file starts like a {fmt} but cannot be read: truncated?"
        )
    if fmt is not None:
        return ImageError(
            "unsupported_format", f"{fmt} images are not supported; send {', '.join(FORMATS)}"
        )
    return ImageError("not_an_image", "the file is not an image (no known image format)")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check format and size before anything is decoded."""
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:  # PIL's own ceiling, above ours by default
        raise ImageError("image_too_large", f"decompression bomb refused: {e}") from None
    except UnidentifiedImageError:
        raise _refuse_unopenable(data) from None
    except Exception:  # damaged headers raise anything from struct.error to ValueError
        raise _refuse_unopenable(data) from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageError(
            "image_too_large",
            f"{w}×{h} is {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(decompression-bomb guard)",
        )
    if w == 0 or h == 0:
        im.close()
        raise ImageError("corrupt_image", f"the image is {w}×{h} pixels")
    return im


def _load(im: Image.Image) -> None:
    try:
        im.load()
    except Exception as e:  # decoders raise OSError, EOFError, SyntaxError, ...
        text = str(e) or type(e).__name__
        truncated = isinstance(e, EOFError) or "truncat" in text.lower()
        code = "truncated_image" if truncated else "corrupt_image"
        raise ImageError(code, f"cannot decode the {im.format} image: {text}") from None


def upright(im: Image.Image) -> Image.Image:
    """The image as it is displayed: EXIF orientation applied (a malformed block is ignored)."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # a malformed EXIF block should not cost the image
        return im


def _sixteen_to_eight(im: Image.Image) -> Image.Image:
    a = np.asarray(im).astype(np.int64)
    if im.mode != "I" or a.max(initial=0) > 255:  # "I" holds 8-bit data as often as 16-bit
        a = (np.clip(a, 0, 65535) * 255 + 32767) // 65535
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode → RGB; alpha composited on white."""
    if im.mode in SIXTEEN_BIT_MODES:
        im = _sixteen_to_eight(im)
    if im.mode in ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def open_rgb(data: bytes, max_pixels: int = 40_000_000) -> Image.Image:
    """One uploaded file as it is displayed: RGB, upright, at its own size; ImageError if it is
    unusable. What /explain draws its maps on."""
    return _decode(data, max_pixels, reduce=False)[0]


def displayed_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: swapped where the EXIF orientation turns the image."""
    w, h = im.size
    try:
        turned = im.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)
    except Exception:  # a malformed EXIF block is ignored, as upright() ignores it
        turned = False
    return (h, w) if turned else (w, h)


SMALL_PIXELS = 128 * 128  # `is_small`'s bound


def is_small(data: bytes) -> bool:
    """Whether the header declares at most SMALL_PIXELS, so that the service may decode the
    upload on its event loop rather than hop to a worker thread: at most 0.24 ms of blocking
    (a 128×128 JPEG; 0.09 ms for Tiny ImageNet's 64×64, against 0.08 ms for a hop on an idle
    loop and more under load; 256×256 would take 0.75 ms), measured on 2 AMD EPYC cores.
    False for anything unreadable, which the full decode then names."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            w, h = im.size
    except Exception:  # any failure: leave it to _decode's checks and messages
        return False
    return w * h <= SMALL_PIXELS


def open_reduced(data: bytes, max_pixels: int = 40_000_000) -> tuple[Image.Image, tuple]:
    """(the upright RGB image, reduced for the model's input where the format can do it while
    decoding; its full size as displayed). A JPEG decodes at 1/2, 1/4 or 1/8 scale in the DCT
    domain (PIL's `draft`), never below DRAFT_MIN (256) pixels a side: a 4000×3000 phone photo in
    9.8 ms instead of 155 (BENCHMARKS.md), with the same answer (README, serving section)."""
    return _decode(data, max_pixels, reduce=True)


def _decode(data: bytes, max_pixels: int, reduce: bool) -> tuple[Image.Image, tuple]:
    if not data:
        raise ImageError("empty_image", "the image is empty (0 bytes)")
    with _open(data, max_pixels) as im:
        size = displayed_size(im)
        if reduce and im.format in ("JPEG", "MPO"):
            im.draft(None, (DRAFT_MIN, DRAFT_MIN))
        _load(im)
        return to_rgb(upright(im)), size


def open_for_overlay(data: bytes, max_pixels: int = 40_000_000, side: int = OVERLAY_MAX_SIDE):
    """The upright RGB image to draw maps on: as displayed, scaled down to `side` pixels on its
    long side where it is larger (a JPEG decoded at a reduced scale first, as `open_reduced`), so
    drawing costs the same for any upload past that size."""
    with _open(data, max_pixels) as im:
        w, h = displayed_size(im)
        scale = min(1.0, side / max(w, h))
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
        if scale < 1 and im.format in ("JPEG", "MPO"):
            im.draft(None, (min(target), min(target)))  # at least this on the short side
        _load(im)
        rgb = to_rgb(upright(im))
    return rgb if rgb.size == target else rgb.resize(target, RESAMPLE, reducing_gap=REDUCING_GAP)


def model_input(rgb: Image.Image) -> np.ndarray:
    """An RGB image as the model's (64, 64, 3) uint8 input. An image of REDUCE_FROM pixels a
    side or more (a PNG photo; a JPEG is smaller by then, `open_reduced`) is first box-reduced
    by an integer factor to no less than REDUCING_GAP × 64 (PIL's `reducing_gap`), then resized
    bicubically like the rest."""
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        gap = REDUCING_GAP if min(rgb.size) >= REDUCE_FROM else None
        rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), RESAMPLE, reducing_gap=gap)
    return np.asarray(rgb, dtype=np.uint8)


def decode(data: bytes, max_pixels: int = 40_000_000) -> np.ndarray:
    """The (64, 64, 3) uint8 RGB array for one uploaded file; ImageError if it is unusable."""
    return model_input(open_reduced(data, max_pixels)[0])

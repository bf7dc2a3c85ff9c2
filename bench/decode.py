"""What reduced JPEG decoding costs in answers and saves in time, on photo-sized uploads.

    python -m bench.decode VAL_DIR [--model models/model.onnx] [-n 500] [--size 4000x3000]

Each of the first N val images (official layout: val_annotations.txt beside images/) is upscaled
bicubically to --size and saved as a JPEG of quality 90 (about 0.5 MB at 4000×3000, a phone
photo's size; the val image is its only content, so any answer change comes from the decode).
Each upload is then decoded both ways the service could: in full (PIL's decode at full size, then
the bicubic resize to 64×64) and as the service does (inference.preprocess.decode: the DCT-domain
`draft` scale, then the same resize), and both inputs go through the service's backend. Prints
the ms per decode each way, the mean pixel difference, and the top-1 agreement and accuracy of
the two.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.accuracy import BATCH
from common.cli import Parser, fail
from inference.backend import EngineError, ModelFileError, open_backend
from inference.preprocess import RESAMPLE, decode, open_rgb


def photo(path: Path, size: tuple[int, int]) -> bytes:
    im = Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return out.getvalue()


def full_decode(data: bytes) -> np.ndarray:
    """The decode before reduced decoding: every pixel, then one bicubic resize."""
    return np.asarray(open_rgb(data).resize((64, 64), RESAMPLE), np.uint8)


def timed(fn, uploads: list[bytes]) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    arrays = np.stack([fn(d) for d in uploads])
    return arrays, (time.perf_counter() - t0) * 1000 / len(uploads)


def predict(backend, images: np.ndarray) -> np.ndarray:
    parts = [backend.predict(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
    return np.concatenate(parts).argmax(1)


def size_arg(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    if not (w.isdigit() and h.isdigit()):
        raise ValueError(f"--size takes WIDTHxHEIGHT, got {text!r}")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m bench.decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("val", type=Path, help="val folder: val_annotations.txt and images/")
    ap.add_argument("--model", type=Path, default=Path("models/model.onnx"), help="fp32 ONNX")
    ap.add_argument("-n", type=int, default=500, help="how many val images (default 500)")
    ap.add_argument("--size", default="4000x3000", help="photo size, WIDTHxHEIGHT")
    args = ap.parse_args(argv)
    if not (args.val / "val_annotations.txt").is_file():
        return fail(f"{args.val} has no val_annotations.txt (the official val layout)")
    try:
        size = size_arg(args.size)
        backend = open_backend(args.model, max_batch=BATCH)
    except (ValueError, ModelFileError, EngineError) as e:
        return fail(str(e))
    lines = (args.val / "val_annotations.txt").read_text().splitlines()[: args.n]
    rows = [line.split("\t")[:2] for line in lines]
    uploads = [photo(args.val / "images" / name, size) for name, _ in rows]
    truth = np.array([backend.card.wnids.index(wnid) for _, wnid in rows])
    full, full_ms = timed(full_decode, uploads)
    reduced, reduced_ms = timed(decode, uploads)
    a, b = predict(backend, full), predict(backend, reduced)
    diff = np.abs(full.astype(np.int16) - reduced).mean()
    kb = sum(map(len, uploads)) / len(uploads) / 1024
    print(f"{len(uploads)} val images as {size[0]}×{size[1]} JPEGs (q90, {kb:.0f} KB mean); "
          f"model {args.model}, {backend.info['engine']} {backend.info['precision']}")  # fmt: skip
    print(f"decode ms per image: full {full_ms:.1f}, reduced {reduced_ms:.1f}")
    print(f"mean |difference| {diff:.2f}/255 per pixel; top-1 agreement {np.mean(a == b):.2%}")
    print(f"top-1 accuracy: full {np.mean(a == truth):.2%}, reduced {np.mean(b == truth):.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

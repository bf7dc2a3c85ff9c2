"""A figure of class-activation maps on val images: the first N the model gets right and the
first N it gets wrong, each drawn over its image with the predicted class's map, captioned
true → predicted (the README's figure).

    python scripts/cam_grid.py --data tiny-imagenet-200.zip [--model models/model.onnx]
        [-n 8] [--out docs/cam-grid.png]

The maps are the served model's (`inference.backend.open_backend`, the engine `auto` picks), drawn
as the service's format=png draws them (inference/overlay.py), on the image upscaled to --zoom.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common.cli import Parser, fail
from inference.backend import ModelFileError, open_backend
from inference.overlay import overlay

ROOT = Path(__file__).resolve().parents[1]


def pick(probs: np.ndarray, labels: np.ndarray, n: int) -> tuple[list[int], list[int]]:
    """The first `n` right and the first `n` wrong images, by index."""
    right = probs.argmax(1) == labels
    return list(np.flatnonzero(right)[:n]), list(np.flatnonzero(~right)[:n])


def tile(image: np.ndarray, cam: np.ndarray, caption: str, zoom: int) -> Image.Image:
    big = Image.fromarray(image).resize((zoom, zoom), Image.Resampling.BICUBIC)
    out = Image.new("RGB", (zoom, zoom + 28), "white")
    out.paste(overlay(big, cam), (0, 0))
    ImageDraw.Draw(out).multiline_text((3, zoom + 1), caption, fill="black", spacing=1)
    return out


def grid(rows: list[list[Image.Image]], titles: list[str], gap: int = 6) -> Image.Image:
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (cols * (w + gap) + gap, len(rows) * (h + 22) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (row, title) in enumerate(zip(rows, titles, strict=True)):
        y = gap + r * (h + 22)
        draw.text((gap, y), title, fill="black")
        for c, t in enumerate(row):
            sheet.paste(t, (gap + c * (w + gap), y + 16))
    return sheet


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python scripts/cam_grid.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="tiny-imagenet-200.zip or folder")
    p.add_argument("--model", type=Path, default=ROOT / "models/model.onnx")
    p.add_argument("-n", type=int, default=8, help="images per row")
    p.add_argument("--zoom", type=int, default=128, help="tile side in pixels")
    p.add_argument("--out", type=Path, default=ROOT / "docs/cam-grid.png")
    args = p.parse_args(argv)
    if not 1 <= args.n <= 32:
        p.error(f"-n must be between 1 and 32, got {args.n}")
    from training.data import DataError, load

    try:
        backend = open_backend(args.model)
        ds = load(args.data)
    except (ModelFileError, DataError) as e:
        return fail(e)
    x, y = np.asarray(ds.val.x), np.asarray(ds.val.y)
    probs = np.concatenate([backend.predict(x[i : i + 256]) for i in range(0, len(x), 256)])
    rows = []
    for chosen in pick(probs, y, args.n):
        _, _, cam = backend.explain(x[chosen])
        tiles = []
        for k, i in enumerate(chosen):
            pred = int(probs[i].argmax())
            caption = f"true: {ds.names[y[i]][:18]}\nsaid: {ds.names[pred][:18]}"
            tiles.append(tile(x[i], cam[k, pred], caption, args.zoom))
        rows.append(tiles)
    accuracy = float((probs.argmax(1) == y).mean())
    titles = [
        f"right (val top-1 {accuracy:.2%}, {backend.info['engine']} {backend.info['precision']})",
        "wrong: the map of the class the model chose",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid(rows, titles).save(args.out)
    print(f"wrote {args.out}: {args.n} right and {args.n} wrong of {len(y)} val images")
    return 0


if __name__ == "__main__":
    sys.exit(main())

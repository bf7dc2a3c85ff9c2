"""Val accuracy of an exported model on every engine × precision the service can run, beside its
agreement with ONNX Runtime fp32 (the reference every form is checked against at export).

    python -m bench.accuracy VAL_DIR [--model models/model.onnx]
        [--engines onnxruntime:fp32 openvino:bf16 ...] [-n 5000]

VAL_DIR is a folder in the official layout (`val_annotations.txt` beside `images/`). Images are
decoded by the service's own code (inference.preprocess.decode) and run through the service's own
backend (inference.backend.open_backend), so the figures are what `bentoml serve` answers with
TIN_BACKEND and TIN_PRECISION set the same way. Why it exists: the export measures its own forms
(fp32 and INT8), but OpenVINO's fp32 and bf16 inference hints are chosen at load time and have no
file of their own to check, so the README's speed table needs this for their accuracy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.inference import ENGINES
from common.cli import Parser, fail
from inference.backend import EngineError, ModelFileError, open_backend
from inference.preprocess import decode

BATCH = 64


def read_val(folder: Path, limit: int | None) -> tuple[np.ndarray, list[str]]:
    """Decoded images (N, 64, 64, 3) uint8 and their wnids, in val_annotations.txt order."""
    lines = (folder / "val_annotations.txt").read_text().splitlines()
    rows = [r for r in (line.split("\t")[:2] for line in lines) if len(r) == 2][:limit]
    images = np.stack([decode((folder / "images" / name).read_bytes()) for name, _ in rows])
    return images, [wnid for _, wnid in rows]


def probabilities(model: Path, engine: str, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(N, classes) probabilities and the card's wnids, for ENGINE:PRECISION."""
    name, precision = engine.split(":")
    backend = open_backend(model, name, precision, BATCH)
    parts = [backend.predict(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
    return np.concatenate(parts), list(backend.card.wnids)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m bench.accuracy", description=__doc__.split("\n\n")[0])
    ap.add_argument("val", type=Path, help="val folder: val_annotations.txt and images/")
    ap.add_argument("--model", type=Path, default=Path("models/model.onnx"), help="fp32 ONNX")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), metavar="ENGINE:PRECISION",
                    choices=ENGINES)  # fmt: skip
    ap.add_argument("-n", type=int, help="the first N images (default: all)")
    args = ap.parse_args(argv)
    if not (args.val / "val_annotations.txt").is_file():
        return fail(f"{args.val} has no val_annotations.txt (the official val layout)")
    if not args.model.is_file():
        return fail(f"no model at {args.model}")
    images, truth = read_val(args.val, args.n)
    reference = None
    print(f"{len(images)} images of {args.val}; model {args.model}")
    print(f"{'engine':18} {'top-1':>7} {'top-5':>7} {'agrees with onnxruntime:fp32':>29}")
    for engine in ["onnxruntime:fp32", *[e for e in args.engines if e != "onnxruntime:fp32"]]:
        try:
            probs, wnids = probabilities(args.model, engine, images)
        except (EngineError, ModelFileError) as e:
            print(f"{engine:18} not run: {e}")
            continue
        labels = np.array([wnids.index(w) for w in truth])
        top5 = np.argsort(-probs, axis=1)[:, :5]
        top1 = top5[:, 0]
        reference = top1 if reference is None else reference
        hit5 = (top5 == labels[:, None]).any(1)
        agree = np.mean(top1 == reference)
        print(
            f"{engine:18} {np.mean(top1 == labels):7.2%} {hit5.mean():7.2%} {agree:29.2%}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

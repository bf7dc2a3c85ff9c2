"""Evaluate a checkpoint on Tiny ImageNet val: top-1/top-5 error, per-class accuracy, the most
confused pairs, and a grid of misclassified images with true and predicted names (as in Sun,
"ResNet on Tiny ImageNet" §8, Figure 14).

    python -m training.evaluate --checkpoint runs/final/best.pt --data PATH [--tta-flip] [--out DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from common.cli import Parser, fail
from training.augment import normalize
from training.checkpoint import CheckpointError, load_model
from training.data import DataError
from training.device import resolve_device


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    x: np.ndarray | torch.Tensor,
    mean,
    std,
    *,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    tta_flip: bool = False,
    bf16: bool = False,
) -> torch.Tensor:
    """Logits (N, classes), float32 on the CPU, for uint8 images (N, 64, 64, 3) in eval mode."""
    was_training = model.training  # called mid-run by the training loop: hand the mode back
    model.eval()
    device = torch.device(device)
    out = []
    try:
        for i in range(0, len(x), batch_size):
            xb = torch.as_tensor(np.array(x[i : i + batch_size])).to(device, non_blocking=True)
            xb = normalize(xb, mean, std)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(xb).float()
                if tta_flip:  # average with the mirror image, which the flip augmentation trained
                    logits = (logits + model(xb.flip(-1)).float()) / 2
            out.append(logits.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def topk_accuracy(logits, labels, ks=(1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ...}: the share of rows of `logits` (N, C), numpy or a CPU tensor,
    whose label is among their k largest. Ties go to the lower class index, as argmax does."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    order = np.argsort(-logits, axis=1, kind="stable")[:, : min(max(ks), logits.shape[1])]
    hits = order == labels[:, None]
    return {f"top{k}": float(hits[:, :k].any(1).mean()) for k in ks}


def topk_errors(logits, labels, ks=(1, 5)) -> dict[str, float]:
    return {f"{k}_error": 1 - v for k, v in topk_accuracy(logits, labels, ks).items()}


def per_class_accuracy(pred: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    right = np.bincount(y[pred == y], minlength=classes)
    total = np.bincount(y, minlength=classes)
    return right / np.maximum(total, 1)


def confused_pairs(pred: np.ndarray, y: np.ndarray, names, top: int = 20) -> list[dict]:
    """The (true, predicted) pairs that occur most among the errors."""
    wrong = pred != y
    pairs, counts = np.unique(np.stack([y[wrong], pred[wrong]], 1), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    return [
        {"true": names[pairs[i][0]], "predicted": names[pairs[i][1]], "count": int(counts[i])}
        for i in order
    ]


def error_grid(x, y, pred, names, path, n: int = 24, cols: int = 6, zoom: int = 2) -> Path:
    """A PNG of the first `n` misclassified images, each captioned true → predicted."""
    wrong = np.flatnonzero(pred != y)[:n]
    size, caption = 64 * zoom, 28
    rows = max(1, -(-len(wrong) // cols))
    canvas = Image.new("RGB", (cols * size, rows * (size + caption)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, i in enumerate(wrong):
        r, c = divmod(k, cols)
        tile = Image.fromarray(np.asarray(x[i])).resize((size, size), Image.NEAREST)
        canvas.paste(tile, (c * size, r * (size + caption)))
        text = f"{names[y[i]][:20]}\n→ {names[pred[i]][:20]}"
        draw.text((c * size + 2, r * (size + caption) + size), text, fill="black")
    canvas.save(path)
    return Path(path)


def report(logits: torch.Tensor, y: np.ndarray, names, tta_flip: bool) -> dict:
    """The evaluation JSON: errors, loss, per-class accuracy and the most confused pairs."""
    y = np.asarray(y)
    pred = logits.argmax(1).numpy()
    acc = per_class_accuracy(pred, y, len(names))
    order = np.argsort(acc, kind="stable")
    return {
        **topk_errors(logits, y),
        "loss": F.cross_entropy(logits, torch.as_tensor(y)).item(),
        "images": len(y),
        "tta_flip": tta_flip,
        "per_class_accuracy": {names[c]: round(float(acc[c]), 4) for c in range(len(names))},
        "worst_classes": [names[c] for c in order[:10]],
        "best_classes": [names[c] for c in order[::-1][:10]],
        "most_confused": confused_pairs(pred, y, names),
    }


def evaluate_checkpoint(
    checkpoint, data, *, tta_flip=False, out: str | Path | None = None, device=None
) -> dict:
    """Evaluate `checkpoint` on the val split of `data`; write JSON and error grid into `out`."""
    from training.data import load

    device = resolve_device(device)
    model, ckpt = load_model(checkpoint, device)
    sub = ckpt["config"]["data"]
    ds = load(data, classes=sub["classes"], per_class=sub["per_class"])
    if list(ds.wnids) != ckpt["classes"]["wnids"]:
        raise DataError(f"{data}: its classes differ from those the checkpoint was trained on")
    pre = ckpt["preprocessing"]
    logits = predict(model, ds.val.x, pre["mean"], pre["std"], device=device, tta_flip=tta_flip)
    result = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        **report(logits, ds.val.y, ds.names, tta_flip),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(result, indent=1))
        error_grid(ds.val.x, ds.val.y, logits.argmax(1).numpy(), ds.names, out / "errors.png")
    return result


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="tiny-imagenet-200.zip or folder")
    p.add_argument("--tta-flip", action="store_true", help="average logits with the mirror image")
    p.add_argument(
        "--out", help="folder for evaluation.json and errors.png (default: beside the checkpoint)"
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    args = p.parse_args(argv)
    out = args.out or Path(args.checkpoint).parent
    try:
        r = evaluate_checkpoint(
            args.checkpoint, args.data, tta_flip=args.tta_flip, out=out, device=args.device
        )
    except (CheckpointError, DataError) as e:
        return fail(e)
    print(json.dumps({k: r[k] for k in ("top1_error", "top5_error", "loss", "images")}))
    print(f"wrote {Path(out) / 'evaluation.json'} and {Path(out) / 'errors.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

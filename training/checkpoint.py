"""Self-describing checkpoints, written atomically.

A checkpoint carries everything a later stage needs to rebuild the network and its input
contract from the file alone: the resolved training config (architecture included), the class
wnids and names, and the preprocessing constants, beside the weights and the training state
(optimizer, step, elapsed time, RNG states) that `--resume` continues from.

`load_model(path)` is the one way from a file to the network that evaluation and export use:
the weight average (EMA) where the run kept one, else the trained weights (`inference_weights`).

    python -m training.checkpoint slim runs/final/last.pt models/model.pt --half
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from common.cli import Parser, fail
from training.config import ConfigError, from_dict
from training.models import ModelConfig, build_model

FORMAT = "tiny-imagenet-resnet/checkpoint/v1"
REQUIRED = ("format", "config", "classes", "preprocessing", "model")


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this project; the message says why."""


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write `payload` to `path` atomically: a reader (or a crash) sees the old file or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint of this project, or fail with a message naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        # weights_only: a checkpoint is data (tensors, numbers, strings), never code to unpickle.
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several unrelated types for a broken file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (format: {found!r})")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return ckpt


def inference_weights(ckpt: dict) -> dict:
    """The weights to evaluate and export: the EMA where the run kept one (it scores higher and
    is what the run's own evaluation measured), else the trained weights."""
    return ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]


def load_model(path: str | os.PathLike, device="cpu") -> tuple[torch.nn.Module, dict]:
    """The eval-mode network a checkpoint describes, with its `inference_weights`, and the
    checkpoint. Any problem with the file is a CheckpointError that names it."""
    ckpt = load_checkpoint(path)
    try:
        model = build_model(from_dict(ModelConfig, ckpt["config"]["model"]))
        model.load_state_dict(inference_weights(ckpt))
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: checkpoint config does not describe a network: {e}") from e
    except RuntimeError as e:  # load_state_dict: missing, unexpected or mis-shaped tensors
        first = str(e).splitlines()[:3]
        raise CheckpointError(f"{path}: weights do not fit its network: {first}") from e
    return model.to(device).eval(), ckpt


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def slim(ckpt: dict, half: bool = False) -> dict:
    """An inference-only checkpoint: the weights export uses (EMA where present), no train state.

    A ResNet-34 training checkpoint holds weights, EMA and momentum (~256 MB); the slim one is
    85 MB, 43 MB with `half` (fp16 storage; load_state_dict casts back into the fp32 network).
    It is what a GPU lease brings back (64 MiB a call) and what `python -m export` needs.
    """
    weights = inference_weights(ckpt)
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    train = ckpt.get("train") or {}
    return {
        **{k: ckpt[k] for k in ("preset", "config", "classes", "preprocessing") if k in ckpt},
        "model": weights,
        "ema": None,
        "slim": {"half": half, "step": train.get("step"), "history": train.get("history", [])},
    }


def main(argv=None) -> int:
    p = Parser(prog="python -m training.checkpoint", description=slim.__doc__)
    p.add_argument("command", choices=["slim"])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--half", action="store_true", help="store weights as fp16")
    args = p.parse_args(argv)
    try:
        out = save_checkpoint(args.dst, slim(load_checkpoint(args.src), half=args.half))
    except CheckpointError as e:
        return fail(e)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB, sha256 {file_sha256(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

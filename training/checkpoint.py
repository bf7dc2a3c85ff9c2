"""Self-describing checkpoints, written atomically.

A checkpoint carries everything a later stage needs to rebuild the network and its input
contract from the file alone: the resolved training config (architecture included), the class
wnids and names, and the preprocessing constants, beside the weights and the training state
(optimizer, step, elapsed time, RNG states) that `--resume` continues from.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

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


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

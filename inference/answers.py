"""The bodies the API answers with, from the model's outputs: top-k predictions, and per class its
activation map (Zhou et al., CVPR 2016) as numbers or drawn over the image. Pure numpy and PIL.

Which classes an explanation covers is an `Ask`: the top k, or one class by wnid. Each class
comes with its map in logit units and the bias that makes mean(cam) + bias its logit, so a caller
can check the map, rescale it, or draw it as it likes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
from PIL import Image

from inference import overlay
from inference.contract import ModelCard


def top_k(probs: np.ndarray, k: int, card: ModelCard) -> list[dict]:
    """The k most probable classes, most probable first; ties keep class order."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [_prediction(rank, i, probs, card) for rank, i in enumerate(order, start=1)]


def confident(probs: np.ndarray, min_confidence: float | None) -> bool | None:
    """Whether the top-1 probability reaches `min_confidence`; None when nothing was asked. The
    probabilities are calibrated at export (export/calibration.py), so a threshold means what
    it says: the model card's `calibration.selective` gives the one for 80% and 90% top-1."""
    if min_confidence is None:
        return None
    return bool(float(probs.max()) >= min_confidence)


def _prediction(rank: int, i: int, probs: np.ndarray, card: ModelCard) -> dict:
    return {
        "rank": int(rank),
        "wnid": card.wnids[i],
        "label": card.names[i],
        "probability": round(float(probs[i]), 6),
    }


@dataclass(frozen=True)
class Ask:
    """The classes to explain: the `top_k` most probable, or the one class `wnid`."""

    top_k: int = 3
    wnid: str | None = None

    def classes(self, probs: np.ndarray, card: ModelCard) -> list[tuple[int, int]]:
        """(rank, class index) pairs, most probable first."""
        order = np.argsort(-probs, kind="stable")
        if self.wnid is None:
            return [(r, int(i)) for r, i in enumerate(order[: self.top_k], start=1)]
        i = card.wnids.index(self.wnid)
        return [(int(np.flatnonzero(order == i)[0]) + 1, i)]


def explanation(probs, logits, cam, card: ModelCard, ask: Ask) -> list[dict]:
    """The explained classes of one image: prediction, logit, bias and map (h × w lists)."""
    out = []
    for rank, i in ask.classes(probs, card):
        m = cam[i].astype(np.float64)
        out.append(
            {
                **_prediction(rank, i, probs, card),
                "logit": round(float(logits[i]), 6),
                "bias": round(float(logits[i] - m.mean()), 6),
                "cam": np.round(m, 6).tolist(),
            }
        )
    return out


def png_parts(image: Image.Image, classes: list[dict]) -> list[tuple[str, bytes, dict]]:
    """One PNG per explained class: its map over `image` (upright, at its own size)."""
    parts = []
    for c in classes:
        data = overlay.png(overlay.overlay(image, np.asarray(c["cam"])))
        headers = {
            "X-Rank": str(c["rank"]),
            "X-Wnid": c["wnid"],
            # A label is plain text (words.txt), but a header must be latin-1: keep it ASCII.
            "X-Label": c["label"].encode("ascii", "replace").decode(),
            "X-Probability": str(c["probability"]),
        }
        parts.append((f"{c['rank']}-{c['wnid']}.png", data, headers))
    return parts


def multipart_mixed(parts: list[tuple[str, bytes, dict]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/mixed answer with one image/png part per file."""
    boundary = f"tin-{uuid.uuid4().hex}"
    chunks = []
    for name, data, headers in parts:
        head = [
            f"--{boundary}",
            "Content-Type: image/png",
            f'Content-Disposition: attachment; filename="{name}"',
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        chunks.append(("\r\n".join(head) + "\r\n\r\n").encode() + data + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/mixed; boundary={boundary}"

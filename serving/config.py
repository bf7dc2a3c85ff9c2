"""The service's settings, from environment variables (read when the service starts).

TIN_MODEL                 ONNX file to serve (default models/model.onnx under the repo root)
TIN_MAX_UPLOAD_MB         largest request body, in MiB, for either endpoint (10)
TIN_MAX_BATCH_IMAGES      most images in one /classify_batch request (64)
TIN_MAX_PIXELS            largest image accepted, in pixels: the decompression-bomb guard (40 M)
TIN_BATCH_MAX_SIZE        adaptive batching: most images in one model call (32)
TIN_BATCH_MAX_LATENCY_MS  adaptive batching: a request expected to wait longer is refused with
                          503 instead of queueing without end (10000)
TIN_TRT_CACHE             where ONNX Runtime's TensorRT provider keeps the engines it builds
                          (tin-trt in the temp folder); only with onnxruntime-gpu installed
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.cli import ConfigError

__all__ = ["ConfigError", "Settings", "settings"]

REPO_ROOT = Path(__file__).resolve().parent.parent  # in a built Bento: its src/ folder
DEFAULT_MODEL = REPO_ROOT / "models" / "model.onnx"
MAX_TOP_K = 200  # Tiny ImageNet's class count; a smaller model answers min(top_k, classes)
DEFAULT_TOP_K = 5


def _number(name: str, default: float, minimum: float, kind=int):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} is below {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    model_path: Path
    max_upload_bytes: int
    max_batch_images: int
    max_pixels: int

    @property
    def model_name(self) -> str:
        return self.model_path.stem


def settings() -> Settings:
    model = os.environ.get("TIN_MODEL", "").strip()
    return Settings(
        model_path=Path(model).expanduser().resolve() if model else DEFAULT_MODEL,
        max_upload_bytes=int(_number("TIN_MAX_UPLOAD_MB", 10, 0.001, float) * 1024 * 1024),
        max_batch_images=_number("TIN_MAX_BATCH_IMAGES", 64, 1),
        max_pixels=_number("TIN_MAX_PIXELS", 40_000_000, 1),
    )


def batch_max_size() -> int:
    # Read when serving/service.py is imported: BentoML takes batching settings in its decorator.
    return _number("TIN_BATCH_MAX_SIZE", 32, 1)


def batch_max_latency_ms() -> int:
    return _number("TIN_BATCH_MAX_LATENCY_MS", 10_000, 1)

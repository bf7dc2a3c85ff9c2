"""The service's settings, from environment variables (read when the service starts).

TIN_MODEL                 the model to serve: an ONNX file written by `python -m export`, or a
                          model in BentoML's model store, name[:version] (serving/store.py).
                          Default: models/model.onnx under the repo root, or without it (a Bento
                          built from the store) the store's latest tiny-imagenet-resnet
TIN_BACKEND               auto | onnxruntime | openvino (auto: inference/backend.py `choose`)
TIN_PRECISION             auto | fp32 | bf16 | int8 (bf16: OpenVINO only; int8: the model's INT8
                          form beside it)
TIN_THREADS               inference threads (default: every core)
TIN_API_KEYS              comma-separated API keys; with keys (or TIN_API_KEYS_FILE, one key a
                          line) every route but /livez, /readyz, /healthz, /metrics and the demo
                          page /ui needs `Authorization: Bearer KEY` (serving/auth.py)
TIN_MAX_UPLOAD_MB         largest request body, in MiB, for any endpoint (10)
TIN_MAX_BATCH_IMAGES      most images in one batch request (64)
TIN_MAX_PIXELS            largest image accepted, in pixels: the decompression-bomb guard (40 M)
TIN_MIN_CONFIDENCE        a probability: answers whose top-1 is below it say "confident": false (a
                          request's own min_confidence wins); off by default
TIN_HEADER_TIMEOUT_S      seconds a connection may take to send its request headers (10)
TIN_BODY_TIMEOUT_S        seconds a request body may pause before a 408 (10)
TIN_MAX_CONNECTIONS       connections held at once; past it the one idle longest is closed
                          (default: the open-file limit less 512)
TIN_DRAIN_S               seconds the server goes on answering after SIGTERM, /readyz 503 (0.5)
TIN_MAX_OVERLAYS          PNG overlays (/explain?format=png) drawn at once; more get 503 (2)
TIN_BATCH_MAX_SIZE        micro-batching: most images in one engine call (32)
TIN_BATCH_MAX_LATENCY_MS  micro-batching: a request expected to wait longer in the queue is
                          refused with 503 instead of queueing without end (10000)
TIN_TRACING               1: OpenTelemetry spans for every request, for a tracing exporter set
                          in BentoML's configuration; off by default (`tracing_options` says why)
TIN_TRT_CACHE             where ONNX Runtime's TensorRT provider keeps the engines it builds
                          (tin-trt in the temp folder); only with onnxruntime-gpu installed
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from common.cli import ConfigError

__all__ = ["ConfigError", "Settings", "settings"]

REPO_ROOT = Path(__file__).resolve().parent.parent  # in a built Bento: its src/ folder
DEFAULT_MODEL = REPO_ROOT / "models" / "model.onnx"
MAX_TOP_K = 200  # Tiny ImageNet's class count; a smaller model answers min(top_k, classes)
DEFAULT_TOP_K = 5
DEFAULT_EXPLAIN_TOP_K = 3
TAG_PART = re.compile(r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$")  # bentoml/_internal/tag.py


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
    backend: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    model_tag: str | None = None  # name:version when TIN_MODEL names a stored model
    min_confidence: float | None = None  # TIN_MIN_CONFIDENCE: the answers' default threshold
    header_timeout_s: float = 10.0  # TIN_HEADER_TIMEOUT_S (serving/bentoml_patches.py, 4)
    body_timeout_s: float = 10.0  # TIN_BODY_TIMEOUT_S: a pause in a body longer is a 408
    drain_s: float = 0.5  # TIN_DRAIN_S (serving/bentoml_patches.py, 7)
    max_connections: int | None = None  # TIN_MAX_CONNECTIONS (serving/bentoml_patches.py, 8)

    @property
    def model_name(self) -> str:
        return self.model_tag or self.model_path.stem


def is_store_tag(spec: str) -> bool:
    """True if `spec` names a stored model rather than a file: no path separator, not an
    existing file, no model suffix, and a valid BentoML tag (name or name:version)."""
    if not spec or "/" in spec or "\\" in spec or Path(spec).exists():
        return False
    if spec.endswith((".onnx", ".xml")):
        return False
    name, _, version = spec.partition(":")
    return bool(TAG_PART.match(name)) and (not version or bool(TAG_PART.match(version)))


def model_tag() -> str | None:
    """The stored model to serve: TIN_MODEL when it is a tag; with TIN_MODEL unset and no
    models/model.onnx (a Bento built from the store has none), the store's latest model."""
    model = os.environ.get("TIN_MODEL", "").strip()
    if not model and not DEFAULT_MODEL.exists():
        from serving import store

        return store.MODEL_NAME if store.has_model(store.MODEL_NAME) else None
    return model if is_store_tag(model) else None


def _model() -> tuple[Path, str | None]:
    if tag := model_tag():
        from serving import store

        return store.model_file(tag), store.resolved_tag(tag)
    model = os.environ.get("TIN_MODEL", "").strip()
    return (Path(model).expanduser().resolve() if model else DEFAULT_MODEL), None


def settings() -> Settings:
    path, tag = _model()
    threads = os.environ.get("TIN_THREADS", "").strip()
    connections = os.environ.get("TIN_MAX_CONNECTIONS", "").strip()
    return Settings(
        model_path=path,
        model_tag=tag,
        max_upload_bytes=int(_number("TIN_MAX_UPLOAD_MB", 10, 0.001, float) * 1024 * 1024),
        max_batch_images=_number("TIN_MAX_BATCH_IMAGES", 64, 1),
        max_pixels=_number("TIN_MAX_PIXELS", 40_000_000, 1),
        backend=os.environ.get("TIN_BACKEND", "").strip().lower() or "auto",
        precision=os.environ.get("TIN_PRECISION", "").strip().lower() or "auto",
        threads=_number("TIN_THREADS", 0, 1) if threads else None,
        min_confidence=min_confidence(),
        header_timeout_s=_number("TIN_HEADER_TIMEOUT_S", 10, 0.1, float),
        body_timeout_s=_number("TIN_BODY_TIMEOUT_S", 10, 0.1, float),
        drain_s=_number("TIN_DRAIN_S", 0.5, 0.0, float),
        max_connections=_number("TIN_MAX_CONNECTIONS", 0, 16) if connections else None,
    )


def min_confidence() -> float | None:
    raw = os.environ.get("TIN_MIN_CONFIDENCE", "").strip()
    if not raw:
        return None
    value = _number("TIN_MIN_CONFIDENCE", 0, 0.0, float)
    if value > 1:
        raise ConfigError(f"TIN_MIN_CONFIDENCE={raw!r} is a probability: give 0 to 1")
    return value


def tracing_options() -> dict:
    """The service's `tracing` option for @bentoml.service, if any: off (every path excluded
    from BentoML's OpenTelemetry middleware) unless TIN_TRACING=1. BentoML samples no span by
    default (`sampled=0` in each access-log line) yet builds one for every request: 0.2-0.3 ms
    of the event loop's 0.8-1.1 ms a request; without it, 9-14% more requests a second at
    concurrency 32 (2 AMD EPYC cores, three pairs of runs in turn: docs/LOG.md)."""
    raw = os.environ.get("TIN_TRACING", "").strip()
    if raw not in ("", "0", "1"):
        raise ConfigError(f"TIN_TRACING={raw!r}: use 1 (spans for every request) or 0 (none)")
    return {} if raw == "1" else {"tracing": {"excluded_urls": ".*"}}


def max_overlays() -> int:
    """TIN_MAX_OVERLAYS: PNG overlays drawn at once (each up to 1024 px a side, about 0.1 s and
    tens of MB); more are refused with 503 and Retry-After."""
    return _number("TIN_MAX_OVERLAYS", 2, 1)


def batch_max_size() -> int:
    return _number("TIN_BATCH_MAX_SIZE", 32, 1)


def batch_max_latency_ms() -> int:
    return _number("TIN_BATCH_MAX_LATENCY_MS", 10_000, 1)

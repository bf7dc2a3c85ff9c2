"""The exported ONNX model under ONNX Runtime, on the best execution provider installed.

Needs only onnxruntime and numpy (the `serve` extra): the model card comes from the file's
metadata through ONNX Runtime, not through the onnx package.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.contract import (
    IMAGE_SIZE,
    INPUT_NAME,
    OUTPUT_PROBABILITIES,
    ContractError,
    ModelCard,
)

log = logging.getLogger("bentoml.tin")  # BentoML prints its own loggers

# Best first. ONNX Runtime also lists providers that cannot run a local model (Azure), so only
# these are ever asked for.
PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class ModelFileError(RuntimeError):
    """The model file is missing or is not an exported Tiny ImageNet model."""


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise ModelFileError(
            f"model file {path} not found: set TIN_MODEL to an ONNX file written by "
            "`python -m export`, or put the default model at models/model.onnx (see README.md)"
        )


def _session(path: Path, providers: list, options: ort.SessionOptions | None = None):
    _check_exists(path)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # ONNX Runtime raises its own Fail/InvalidProtobuf classes
        raise ModelFileError(f"{path} is not a readable ONNX model: {e}") from None


def _card(session: ort.InferenceSession, path: Path) -> ModelCard:
    try:
        return ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)
    except ContractError as e:
        raise ModelFileError(f"{path}: {e}") from None


def read_card(source) -> ModelCard:
    """The model card of an exported model: from a file's metadata (read without optimising or
    placing the graph), or from an in-memory onnx.ModelProto (anything with metadata_props)."""
    if hasattr(source, "metadata_props"):
        try:
            return ModelCard.from_metadata({p.key: p.value for p in source.metadata_props})
        except ContractError as e:
            raise ModelFileError(f"in-memory model: {e}") from None
    path = source
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return _card(_session(Path(path), ["CPUExecutionProvider"], opts), Path(path))


def providers(max_batch: int) -> list:
    """The installed providers in PREFERRED order, with their options."""
    available = set(ort.get_available_providers())
    chosen = []
    for name in PREFERRED:
        if name not in available:
            continue
        if name == "TensorrtExecutionProvider":
            # Keep built engines between starts, and build one profile covering every batch
            # size adaptive batching can send, instead of rebuilding per new shape.
            cache = Path(os.environ.get("TIN_TRT_CACHE", Path(tempfile.gettempdir()) / "tin-trt"))
            shape = f"{INPUT_NAME}:{{}}x{IMAGE_SIZE}x{IMAGE_SIZE}x3"
            options = {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_profile_min_shapes": shape.format(1),
                "trt_profile_opt_shapes": shape.format(max_batch),
                "trt_profile_max_shapes": shape.format(max_batch),
            }
            chosen.append((name, options))
        else:
            chosen.append(name)
    return chosen


class OnnxBackend:
    """One InferenceSession: uint8 (N, 64, 64, 3) in, probabilities (N, C) out."""

    def __init__(self, path: str | Path, max_batch: int = 64):
        self.path = Path(path)
        self.max_batch = max_batch
        opts = ort.SessionOptions()
        # ONNX Runtime's worker threads spin between runs by default, burning the cores that the
        # HTTP side of the service (and, on a small machine, its client) needs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = _session(self.path, providers(max_batch), opts)
        self.card = _card(self.session, self.path)
        # ONNX Runtime falls back silently when a provider cannot start (no GPU, missing CUDA
        # libraries): report what the session really uses, not what was asked for.
        self.provider = self.session.get_providers()[0]
        log.info("serving %s on ONNX Runtime %s with %s", self.path, ort.__version__, self.provider)

    @property
    def info(self) -> dict:
        return {
            "runtime": "onnxruntime",
            "runtime_version": ort.__version__,
            "provider": self.provider,
            "providers": self.session.get_providers(),
            "device": ort.get_device(),
            "max_batch_size": self.max_batch,
        }

    def predict(self, images: np.ndarray) -> np.ndarray:
        if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(f"expected uint8 (N, 64, 64, 3), got {images.dtype} {images.shape}")
        if len(images) == 0:
            return np.zeros((0, len(self.card.wnids)), np.float32)
        (probs,) = self.session.run([OUTPUT_PROBABILITIES], {INPUT_NAME: images})
        return probs

    def warm_up(self) -> None:
        """Run the sizes batching will send first, so no request pays for allocation or for
        building a TensorRT engine."""
        for n in sorted({1, self.max_batch}):
            self.predict(np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))

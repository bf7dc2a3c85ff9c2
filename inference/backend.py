"""The exported model under ONNX Runtime or OpenVINO, in the form the machine runs best.

One exported model comes in up to three files side by side, each self-describing (the export
writes them; inference/contract.py):

    NAME.onnx        fp32 compute (weights may be stored fp16)   ONNX Runtime (CPU, CUDA), OpenVINO
    NAME.int8.onnx   INT8, QDQ (NNCF)                            ONNX Runtime
    NAME.int8.xml    INT8 OpenVINO IR (+ NAME.int8.bin, NNCF)    OpenVINO

`choose(path, engine, precision)` picks one (TIN_BACKEND=auto|onnxruntime|openvino and
TIN_PRECISION=auto|fp32|bf16|int8). `auto` takes the fastest form that holds the accuracy bar
(contract.INT8_MAX_DROP_POINTS, INT8_MIN_AGREEMENT, read from the form's own card): on a GPU
ONNX Runtime's CUDA provider on the fp32 file; on a CPU OpenVINO INT8 where openvino is installed
and the IR exists (ONNX Runtime fp32's img/s × 5.3 on an AVX-512 AMX Xeon, × 4.3 on a VNNI one
without AMX; 2 threads), else ONNX Runtime INT8 where that file exists (× 2.3-2.5), else ONNX
Runtime fp32. An engine asked for by
name that cannot start is a startup error, never a silent fallback.

Needs only numpy, onnxruntime and (for its forms) openvino: the cards are read from the files'
metadata without the onnx package, an IR's from its XML.
"""

from __future__ import annotations

import logging
import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.cli import ConfigError
from inference.contract import (
    IMAGE_SIZE,
    INPUT_NAME,
    INT8_MAX_DROP_POINTS,
    INT8_MIN_AGREEMENT,
    IR_CARD_KEY,
    OUTPUT_CAM,
    OUTPUT_LOGITS,
    OUTPUT_PROBABILITIES,
    ContractError,
    ModelCard,
    int8_paths,
)

log = logging.getLogger("bentoml.tin")  # BentoML prints its own loggers

ENGINES = ("auto", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
# Best first. ONNX Runtime also lists providers that cannot run a local model (Azure), so only
# these are ever asked for.
PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class ModelFileError(RuntimeError):
    """The model file is missing, unreadable, or not an exported Tiny ImageNet model."""


class EngineError(RuntimeError):
    """The engine or precision asked for cannot run here; the message says why and what can."""


# --- cards -----------------------------------------------------------------------------------


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise ModelFileError(
            f"model file {path} not found: set TIN_MODEL to an ONNX file written by "
            "`python -m export`, or put the default model at models/model.onnx (see README.md)"
        )


def _card(meta: dict, where) -> ModelCard:
    try:
        return ModelCard.from_metadata(meta)
    except ContractError as e:
        raise ModelFileError(f"{where}: {e}") from None


def _ir_metadata(path: Path) -> dict:
    """The card an OpenVINO IR keeps in its rt_info, read from the XML (no openvino needed)."""
    try:
        node = ET.parse(path).getroot().find(f"rt_info/{IR_CARD_KEY}")
    except ET.ParseError as e:
        raise ModelFileError(f"{path} is not a readable OpenVINO IR: {e}") from None
    return {} if node is None else {child.tag: child.get("value") for child in node}


def read_card(source) -> ModelCard:
    """The model card of an exported model: an ONNX file or OpenVINO IR (.xml) on disk, read
    without optimising or placing the graph, or an in-memory onnx.ModelProto."""
    if hasattr(source, "metadata_props"):
        try:
            return ModelCard.of(source)
        except ContractError as e:
            raise ModelFileError(f"in-memory model: {e}") from None
    path = Path(source)
    _check_exists(path)
    if path.suffix == ".xml":
        return _card(_ir_metadata(path), path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = _ort_session(path, ["CPUExecutionProvider"], opts)
    return _card(session.get_modelmeta().custom_metadata_map, path)


def holds_bar(card: ModelCard) -> bool:
    """Whether a reduced-precision form's own parity figures meet the accuracy bar."""
    p = card.parity or {}
    return (
        p.get("top1_agreement", 0.0) >= INT8_MIN_AGREEMENT
        and p.get("top1_change_points", -100.0) >= -INT8_MAX_DROP_POINTS
    )


# --- the choice ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    engine: str  # onnxruntime | openvino
    precision: str  # fp32 | bf16 | int8
    path: Path
    why: str


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def gpu_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def choose(path: str | Path, engine: str = "auto", precision: str = "auto") -> Choice:
    """The engine, precision and file to serve `path` (the fp32 ONNX) with; see the module doc."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown TIN_BACKEND {engine!r}; valid: {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown TIN_PRECISION {precision!r}; valid: {', '.join(PRECISIONS)}")
    path = Path(path)
    onnx_int8, ir_int8 = int8_paths(path)
    if engine == "auto" and precision == "auto":
        return _auto(path, onnx_int8, ir_int8)
    engine = engine if engine != "auto" else ("openvino" if precision == "bf16" else "onnxruntime")
    if engine == "openvino" and not openvino_available():
        raise EngineError("TIN_BACKEND=openvino, but openvino is not installed (pip install "
                          "'.[serve]' installs it)")  # fmt: skip
    if precision in ("auto", "fp32"):
        return Choice(engine, "fp32", path, "asked for")
    if precision == "bf16":
        if engine != "openvino":
            raise EngineError("bf16 runs on OpenVINO only (TIN_BACKEND=openvino)")
        return Choice(engine, "bf16", path, "asked for")
    int8 = ir_int8 if engine == "openvino" else onnx_int8
    if not int8.is_file():
        raise EngineError(f"TIN_PRECISION=int8 on {engine} needs {int8}, which does not exist: "
                          "write it with `python -m export ... --int8`")  # fmt: skip
    return Choice(engine, "int8", int8, "asked for")


def _auto(path: Path, onnx_int8: Path, ir_int8: Path) -> Choice:
    if gpu_available():
        return Choice("onnxruntime", "fp32", path, "auto: a CUDA GPU is available")
    skipped = []
    for engine, int8, installed in (
        ("openvino", ir_int8, openvino_available()),
        ("onnxruntime", onnx_int8, True),
    ):
        if not int8.is_file():
            skipped.append(f"no {int8.name}")
        elif not installed:
            skipped.append(f"{engine} not installed")
        elif not holds_bar(read_card(int8)):
            skipped.append(f"{int8.name} misses the accuracy bar")
        else:
            why = f"auto: fastest form on this CPU that holds the accuracy bar ({int8.name})"
            return Choice(engine, "int8", int8, why)
    return Choice("onnxruntime", "fp32", path, f"auto: fp32 ({'; '.join(skipped)})")


# --- engines ---------------------------------------------------------------------------------


def _ort_session(path: Path, providers: list, options: ort.SessionOptions | None = None):
    _check_exists(path)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # ONNX Runtime raises its own Fail/InvalidProtobuf classes
        raise ModelFileError(f"{path} is not a readable ONNX model: {e}") from None


def providers(max_batch: int) -> list:
    """The installed providers in PREFERRED order, with their options."""
    available = set(ort.get_available_providers())
    chosen = []
    for name in PREFERRED:
        if name not in available:
            continue
        if name == "TensorrtExecutionProvider":
            # Keep built engines between starts, and build one profile covering every batch
            # size the micro-batcher can send, instead of rebuilding per new shape.
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


class _OnnxRuntime:
    def __init__(self, path: Path, max_batch: int, threads: int | None):
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # ONNX Runtime's worker threads spin between runs by default, burning the cores that the
        # HTTP side of the service (and, on a small machine, its client) needs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = _ort_session(path, providers(max_batch), opts)
        self.outputs = [o.name for o in self.session.get_outputs()]
        # ONNX Runtime falls back silently when a provider cannot start (no GPU, missing CUDA
        # libraries): report what the session really uses, not what was asked for.
        self.info = {
            "engine": "onnxruntime",
            "engine_version": ort.__version__,
            "provider": self.session.get_providers()[0],
            "device": ort.get_device(),
        }

    def run(self, names: list[str], images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(names, {INPUT_NAME: images})


OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the rest in f32


class _OpenVino:
    """A CPU CompiledModel configured for a server on a small machine: a LATENCY hint with one
    stream using every thread (the service batches requests itself, so one inference at a time
    is what it runs; THROUGHPUT's several streams would split 2 cores into 1-thread streams), no
    CPU pinning (the cores are shared with the HTTP workers), the batch left dynamic."""

    def __init__(self, path: Path, precision: str, threads: int | None):
        import openvino as ov

        _check_exists(path)
        try:
            core = ov.Core()
            model = core.read_model(str(path))
            has_int8 = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
            if has_int8 != (precision == "int8"):
                raise EngineError(f"{path} is {'an INT8' if has_int8 else 'not an INT8'} model, "
                                  f"but precision {precision} was chosen")  # fmt: skip
            config = {
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": "1",
                "INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1),
                "ENABLE_CPU_PINNING": False,
                "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision],
            }
            self.compiled = core.compile_model(model, "CPU", config)
        except EngineError:
            raise
        except Exception as e:  # OpenVINO raises RuntimeError with the plugin's message
            raise EngineError(f"OpenVINO cannot run {path} ({precision}): {e}") from None
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]
        self.info = {
            "engine": "openvino",
            "engine_version": ov.get_version(),
            "device": "CPU",
            "inference_precision": str(self.compiled.get_property("INFERENCE_PRECISION_HINT")),
        }

    def run(self, names: list[str], images: np.ndarray) -> list[np.ndarray]:
        result = self.compiled(images)  # a fresh infer request per call: thread-safe, copied
        by_name = {o.get_any_name(): result[o] for o in self.compiled.outputs}
        return [by_name[n] for n in names]


class Backend:
    """One chosen form of the model: uint8 (N, 64, 64, 3) in; probabilities, logits and the
    class-activation maps out."""

    def __init__(self, choice: Choice, max_batch: int = 64, threads: int | None = None):
        self.choice = choice
        self.max_batch = max_batch
        self.card = read_card(choice.path)
        if choice.engine == "openvino":
            self.engine = _OpenVino(choice.path, choice.precision, threads)
        else:
            self.engine = _OnnxRuntime(choice.path, max_batch, threads)
        self.has_cam = OUTPUT_CAM in self.engine.outputs
        log.info("serving %s: %s %s (%s)", choice.path, choice.engine, choice.precision, choice.why)

    @property
    def info(self) -> dict:
        return {
            **self.engine.info,
            "precision": self.choice.precision,
            "file": self.choice.path.name,
            "chosen": self.choice.why,
            "parity": self.card.parity,
            "max_batch_size": self.max_batch,
        }

    def _check(self, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(f"expected uint8 (N, 64, 64, 3), got {images.dtype} {images.shape}")

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) float32."""
        self._check(images)
        if len(images) == 0:
            return np.zeros((0, len(self.card.wnids)), np.float32)
        return self.engine.run([OUTPUT_PROBABILITIES], np.ascontiguousarray(images))[0]

    def explain(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities (N, C), logits (N, C), cam (N, C, h, w)); mean(cam) + bias = logits."""
        self._check(images)
        if not self.has_cam:
            raise ModelFileError(f"{self.choice.path} has no `cam` output: export it again")
        names = [OUTPUT_PROBABILITIES, OUTPUT_LOGITS, OUTPUT_CAM]
        return tuple(self.engine.run(names, np.ascontiguousarray(images)))

    def warm_up(self) -> None:
        """Run the sizes batching will send first, so no request pays for allocation or for
        building a TensorRT engine."""
        for n in sorted({1, self.max_batch}):
            self.predict(np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))


def open_backend(
    path: str | Path,
    engine: str = "auto",
    precision: str = "auto",
    max_batch: int = 64,
    threads: int | None = None,
) -> Backend:
    """The backend the service (and the batch job) would run for the fp32 model at `path`."""
    return Backend(choose(path, engine, precision), max_batch, threads)

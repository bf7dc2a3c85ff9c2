"""TensorRT engines from the exported ONNX, a runner on torch CUDA tensors, and ONNX Runtime's
TensorRT and CUDA execution providers as the other path.

Written for the TensorRT 10 Python API, pinned as tensorrt-cu12==10.16.1.11 in pyproject's `gpu`
extra (TensorRT 11 removed the FP16/INT8 builder flags used below: `import_tensorrt` refuses any
major version but 10).

- fp32 / fp16: the fp32 ONNX on a weakly typed network; fp16 sets BuilderFlag.FP16, so TensorRT
  may pick half-precision kernels layer by layer.
- int8: the Q/DQ ONNX from export/quantize.py (target "tensorrt": symmetric int8 activations) on a
  strongly typed network: explicit quantization, where the Q/DQ nodes say where int8 runs (TensorRT
  10 docs, "Explicit Quantization": use it with strong typing; precision flags are not needed).
- One optimization profile for the dynamic batch: 1 … max_batch, tuned for `opt_batch`.

TensorRT installs only on Linux x86-64 with CUDA; it is imported lazily, so everything else in the
export works without it, and it fails with `TensorRTUnavailable` saying what to install.
NOT RUN ON A GPU: no machine available to this work had TensorRT or a GPU; the code around it
(argument checks, profiles, provider options, errors) is tested, the builds and runs are not.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from common.cli import ConfigError
from inference import contract as C

PIN = "tensorrt-cu12==10.16.1.11"
TENSORRT_MAJOR = 10
PRECISIONS = ("fp32", "fp16", "int8")
ORT_PATHS = ("tensorrt", "cuda")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a GPU execution provider) is not installed or not usable here."""


class EngineBuildError(RuntimeError):
    """TensorRT rejected the model or could not build an engine; the message has its errors."""


# --- checks that need no TensorRT ----------------------------------------------------------------


def check_precision(precision: str, model: onnx.ModelProto) -> None:
    """int8 needs the Q/DQ model; fp32/fp16 need the float one (a Q/DQ graph would stay int8)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown TensorRT precision {precision!r}; valid: {list(PRECISIONS)}")
    qdq = has_qdq(model)
    if precision == "int8" and not qdq:
        raise ConfigError("int8 engines are built from the Q/DQ ONNX (quantize target 'tensorrt')")
    if precision != "int8" and qdq:
        raise ConfigError(f"a {precision} engine is built from the fp32 ONNX, not a Q/DQ one")


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def profile_shapes(max_batch: int, opt_batch: int | None = None) -> dict[str, tuple[int, ...]]:
    """The optimization profile of the image input: batch 1 … max_batch, tuned at opt_batch."""
    opt_batch = max_batch if opt_batch is None else opt_batch
    if max_batch < 1 or not 1 <= opt_batch <= max_batch:
        raise ConfigError(f"need 1 ≤ opt_batch ≤ max_batch, got opt {opt_batch}, max {max_batch}")
    image = (C.IMAGE_SIZE, C.IMAGE_SIZE, 3)
    return {"min": (1, *image), "opt": (opt_batch, *image), "max": (max_batch, *image)}


def import_tensorrt():
    """The tensorrt module, if it is installed and a 10.x release."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the wheel is there, its CUDA libraries not
        raise TensorRTUnavailable(
            f"TensorRT is not installed ({e}); on Linux x86-64 with CUDA 12: "
            f"pip install '.[gpu]' (pins {PIN})"
        ) from e
    major = int(trt.__version__.split(".")[0])
    if major != TENSORRT_MAJOR:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} found; this code uses the TensorRT {TENSORRT_MAJOR} API "
            f"({PIN}): 11 removed the FP16/INT8 builder flags"
        )
    return trt


# --- building ------------------------------------------------------------------------------------


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    precision: str = "fp16",
    max_batch: int = 64,
    opt_batch: int | None = None,
    workspace_gib: float = 4.0,
) -> Path:
    """Build and write a serialized engine for the ONNX model at `onnx_path`."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    check_precision(precision, onnx.load(str(onnx_path), load_external_data=False))
    shapes = profile_shapes(max_batch, opt_batch)
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if precision == "int8":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(C.INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build a {precision} engine from {onnx_path}")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(f".{engine_path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)
    return engine_path


# --- running an engine on torch CUDA tensors -----------------------------------------------------


def torch_dtype(trt, dtype):
    import torch

    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int8: torch.int8,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.uint8: torch.uint8,
        trt.bool: torch.bool,
    }
    if dtype not in table:
        raise TypeError(f"no torch dtype for TensorRT's {dtype}")
    return table[dtype]


class EngineRunner:
    """Runs a serialized engine on uint8 (N, 64, 64, 3) CUDA tensors with TensorRT 10's
    name-based I/O: set_input_shape, set_tensor_address, execute_async_v3 on torch's stream."""

    def __init__(self, engine_path: str | os.PathLike):
        trt = self.trt = import_tensorrt()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise EngineBuildError(f"{engine_path}: not an engine this TensorRT can load")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        ]
        _, _, max_shape = self.engine.get_tensor_profile_shape(C.INPUT_NAME, 0)
        self.max_batch = int(max_shape[0])

    def __call__(self, images) -> dict:
        """Outputs by name, as CUDA tensors queued on torch's current stream (a host read such as
        .cpu() synchronises)."""
        import torch

        if not (images.is_cuda and images.dtype == torch.uint8 and images.ndim == 4):
            raise ConfigError(f"need a uint8 CUDA tensor (N,64,64,3), got {images.dtype} "
                             f"{tuple(images.shape)} on {images.device}")  # fmt: skip
        if not 1 <= images.shape[0] <= self.max_batch:
            raise ConfigError(f"batch {images.shape[0]} outside this engine's 1..{self.max_batch}")
        # A temporary from contiguous() may be freed on return, before the engine has run: safe,
        # because torch's allocator reuses a block only for work queued later on the same stream.
        images = images.contiguous()
        self.context.set_input_shape(C.INPUT_NAME, tuple(images.shape))
        self.context.set_tensor_address(C.INPUT_NAME, images.data_ptr())
        out = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch_dtype(self.trt, self.engine.get_tensor_dtype(name))
            out[name] = torch.empty(shape, dtype=dtype, device=images.device)
            self.context.set_tensor_address(name, out[name].data_ptr())
        stream = torch.cuda.current_stream(images.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return out

    def logits(self, images):
        """Logits for any number of images, in chunks of at most max_batch (float32, CUDA)."""
        import torch

        parts = [
            self(images[i : i + self.max_batch])[C.OUTPUT_LOGITS].float()
            for i in range(0, len(images), self.max_batch)
        ]
        return torch.cat(parts)


# --- ONNX Runtime's GPU providers ----------------------------------------------------------------


def ort_providers(
    path: str, *, precision: str = "fp16", max_batch: int = 64, cache_dir: str | None = None
) -> list:
    """The provider list of an ONNX Runtime session for `path` 'tensorrt' or 'cuda' (each falls
    back to the next: TensorRT → CUDA → CPU for nodes a provider cannot take)."""
    if path not in ORT_PATHS:
        raise ConfigError(f"unknown ONNX Runtime GPU path {path!r}; valid: {list(ORT_PATHS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid: {list(PRECISIONS)}")
    cuda = ("CUDAExecutionProvider", {"device_id": 0})
    if path == "cuda":
        return [cuda, "CPUExecutionProvider"]
    shapes = profile_shapes(max_batch).items()
    dims = {k: f"{C.INPUT_NAME}:{'x'.join(map(str, v))}" for k, v in shapes}
    trt_options = {
        "device_id": 0,
        "trt_fp16_enable": precision in ("fp16", "int8"),  # int8: fp16 for the float layers
        "trt_int8_enable": precision == "int8",  # Q/DQ model: scales come from the graph
        "trt_profile_min_shapes": dims["min"],
        "trt_profile_opt_shapes": dims["opt"],
        "trt_profile_max_shapes": dims["max"],
    }
    if cache_dir:  # a built engine is reused across sessions (building takes minutes)
        trt_options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
                        "trt_timing_cache_enable": True}  # fmt: skip
    return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]


def ort_session(model_path: str | os.PathLike, path: str = "tensorrt", **kwargs):
    """An InferenceSession on the GPU; fails (not a silent CPU fallback) where the provider is
    missing: ONNX Runtime only warns and runs on the CPU when a GPU provider cannot load."""
    import onnxruntime as ort

    providers = ort_providers(path, **kwargs)
    wanted = providers[0][0]
    available = ort.get_available_providers()
    if wanted not in available:
        raise TensorRTUnavailable(
            f"ONNX Runtime {ort.__version__} here offers {available}, not {wanted}: "
            "install the gpu extra (onnxruntime-gpu) on a CUDA machine"
        )
    sess = ort.InferenceSession(str(model_path), providers=providers)
    if sess.get_providers()[0] != wanted:
        runs_on = sess.get_providers()
        raise TensorRTUnavailable(f"{wanted} failed to load (the session runs on {runs_on})")
    return sess

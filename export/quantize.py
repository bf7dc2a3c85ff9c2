"""INT8 for CPUs: NNCF post-training quantization of the exported model, for ONNX Runtime (a QDQ
ONNX) and for OpenVINO (its own IR), and the symmetric Q/DQ model TensorRT's int8 engines want.

Why NNCF: ONNX Runtime's static quantizer (MinMax, per-channel QDQ) lost 13 points top-1 on the
shipped pre-activation ResNet-34; NNCF's MinMax with its range estimators, the MIXED preset
(symmetric weights, asymmetric activations) and fast bias correction kept it (+0.10 points under
ONNX Runtime, +0.20 under OpenVINO, 97% top-1 agreement with fp32, 5,000 val images). Two files,
because OpenVINO does not compile NNCF's QDQ ONNX ("No suitable implementations") and ONNX
Runtime does not read an IR.

The head stays float (`float_head`): the 1×1 conv that makes the activation maps, their mean, the
bias and the softmax, about 0.1% of the FLOPs. Quantized, NNCF puts a fake quantizer between
`cam` and its mean (mean(cam) + bias ≠ logits by ~0.1), and OpenVINO 2026.4's CPU plugin answers
logits ≈ bias when an INT8 conv feeds both a graph output and a ReduceMean (agreement 0%).

Calibration uses training images only (never val, which measures the result). NNCF is told not
to send telemetry (it does by default, treating a missing consent file as consent).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from common.cli import ConfigError
from export.onnx_export import load_fp16, session
from inference import contract as C

PRESETS = ("mixed", "performance")


def _no_telemetry() -> None:
    """openvino_telemetry (used by NNCF and OpenVINO's converter) stays silent under CI=true;
    without a consent file it would otherwise report usage."""
    os.environ.setdefault("CI", "true")


def calibration_images(train_x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` training images drawn without replacement (sorted indices: sequential memmap reads)."""
    if n < 1:
        raise ConfigError(f"calibration needs at least 1 image, got {n}")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(train_x), size=min(n, len(train_x)), replace=False))
    return np.asarray(train_x[idx])


def float_head(model) -> list[str]:
    """Names of the nodes NNCF must leave in float (an onnx.ModelProto or an ov.Model): every
    node that reads a graph output, and the producer of a graph output that another node reads
    (the cam conv, its mean, the bias add, the softmax)."""
    if isinstance(model, onnx.ModelProto):
        outputs = {o.name for o in model.graph.output}
        read = {i for n in model.graph.node for i in n.input}
        return [n.name for n in model.graph.node
                if outputs & set(n.input) or outputs & read & set(n.output)]  # fmt: skip
    names = set()
    for result in model.get_results():
        value = result.input_value(0)
        readers = [t.get_node() for t in value.get_target_inputs()]
        readers = [r for r in readers if r.get_type_name() != "Result"]
        names.update(r.get_friendly_name() for r in readers)
        if readers:
            names.add(value.get_node().get_friendly_name())
    return sorted(names)


def _quantize(model, calib: np.ndarray, input_name: str, preset: str):
    _no_telemetry()
    import nncf

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    if calib.dtype != np.uint8 or calib.ndim != 4:
        raise ValueError(f"calibration images must be uint8 (N,64,64,3), got {calib.dtype}")
    # One image per item: NNCF's statistics (and subset_size) count samples, not batches.
    items = [np.ascontiguousarray(calib[i : i + 1]) for i in range(len(calib))]
    return nncf.quantize(
        model,
        nncf.Dataset(items, lambda x: {input_name: x}),
        preset=getattr(nncf.QuantizationPreset, preset.upper()),
        subset_size=len(items),
        fast_bias_correction=True,  # the full BiasCorrection crashes on this graph in NNCF 3.4
        ignored_scope=nncf.IgnoredScope(names=float_head(model), validate=False),
    )


def int8_onnx(fp32: onnx.ModelProto, calib: np.ndarray, preset: str = "mixed") -> onnx.ModelProto:
    """The QDQ INT8 model of `fp32` for ONNX Runtime; input, outputs and metadata kept."""
    # NNCF's ONNX backend finds a weight only as an initializer, not behind a Cast.
    model = load_fp16(fp32)
    q = _quantize(model, calib, C.INPUT_NAME, preset)
    io = [(v.name, v.type.tensor_type.elem_type) for v in [*q.graph.input, *q.graph.output]]
    ref = [(v.name, v.type.tensor_type.elem_type) for v in [*fp32.graph.input, *fp32.graph.output]]
    if io != ref:
        raise ValueError(f"quantization changed the graph's inputs/outputs: {ref} -> {io}")
    return q


def openvino_model(model: onnx.ModelProto):
    """The ov.Model of an ONNX ModelProto (OpenVINO reads fp16-stored weights as they are)."""
    _no_telemetry()
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="export-ov-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        return ov.convert_model(str(path))


def int8_openvino(fp32: onnx.ModelProto, calib: np.ndarray, preset: str = "mixed"):
    """The INT8 ov.Model (FakeQuantize ops, run as int8 by the CPU plugin) of `fp32`."""
    model = openvino_model(fp32)
    q = _quantize(model, calib, C.INPUT_NAME, preset)
    names = sorted(o.get_any_name() for o in q.outputs)
    if names != sorted(o.name for o in fp32.graph.output):
        raise ValueError(f"quantization changed the outputs: {names}")
    return q


def save_openvino(model, xml: str | os.PathLike, card: C.ModelCard) -> Path:
    """Write an IR (.xml + .bin) with `card` in its rt_info, where serving reads it back from
    the XML (inference/backend.py `read_card`). Float weights are stored fp16, int8 stays int8."""
    import openvino as ov

    for key, value in card.to_metadata().items():
        model.set_rt_info(value, [C.IR_CARD_KEY, key])
    xml = Path(xml)
    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = xml.with_name(f".{xml.stem}.tmp-{os.getpid()}.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=True)
    os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))  # the weights, then the graph
    os.replace(tmp, xml)
    return xml


def run_openvino(model, images: np.ndarray, outputs=(C.OUTPUT_LOGITS,), batch_size: int = 256):
    """The named outputs of an ov.Model (or .xml path) for uint8 images, in batches, on CPU."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    parts = {name: [] for name in outputs}
    for i in range(0, len(images), batch_size):
        result = compiled(np.ascontiguousarray(images[i : i + batch_size]))
        by_name = {o.get_any_name(): result[o] for o in compiled.outputs}
        for name in outputs:
            parts[name].append(by_name[name])
    return [np.concatenate(parts[name]) for name in outputs]


def tensorrt_qdq(fp32: onnx.ModelProto, calib: np.ndarray) -> onnx.ModelProto:
    """Symmetric int8 Q/DQ (zero points 0), the only kind TensorRT's explicit quantization takes
    ("Working with Quantized Types"), from ONNX Runtime's static quantizer. For TensorRT only,
    and untested: TensorRT cannot be installed on the machines this project has run on."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(calib, max(1, len(calib) // 64)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {C.INPUT_NAME: np.ascontiguousarray(batch)}

    keep_float = float_head(fp32)
    with tempfile.TemporaryDirectory(prefix="export-qdq-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(load_fp16(fp32), str(src))
        quantize_static(
            str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )  # fmt: skip
        return onnx.load(str(dst))


def throughput(model, batch_size: int = 64, threads: int | None = None, seconds: float = 3.0,
               seed: int = 0) -> float:  # fmt: skip
    """Images per second of an ONNX model (path or ModelProto) under ONNX Runtime on the CPU."""
    sess = session(model, threads=threads or os.cpu_count())
    feed = {C.INPUT_NAME: C.random_images(batch_size, seed)}
    for _ in range(2):  # warm-up: first runs allocate and pick kernels
        sess.run(None, feed)
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        sess.run(None, feed)
        runs += 1
    return runs * batch_size / (time.perf_counter() - start)

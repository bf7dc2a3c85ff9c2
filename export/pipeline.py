"""The export as one call: checkpoint → fp32 ONNX, optionally INT8 ONNX and a TensorRT engine.

    from export.pipeline import export
    report = export("runs/final/best.pt", "models/final.onnx", data=ZIP, int8=True)

Files, for `out` = models/NAME.onnx:
    models/NAME.onnx              fp32, checked against PyTorch
    models/NAME.int8.onnx         --int8: QDQ, uint8 activations, for CPUs
    models/NAME.export.json       what was measured (node counts, parity, accuracy, speed)
    ENGINE, ENGINE.qdq.onnx       --tensorrt ENGINE (int8: the symmetric Q/DQ model it came from)

Serving needs none of this module: it reads the ONNX files and export/contract.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from export import onnx_export as E
from export import quantize as Q
from export import tensorrt as T
from export.contract import random_images
from training.checkpoint import file_sha256, load_model
from training.config import ConfigError
from training.evaluate import topk_accuracy

INT8_MIN_AGREEMENT = 0.9  # below this the quantized model is broken, not merely lossy
INT8_TARGET_DROP = 0.01  # reported against: top-1 change on val ≤ 1 point
BENCH_BATCH = 64


def int8_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.int8{out.suffix}")


def check_options(*, data, int8: bool, tensorrt, trt_precision: str, max_batch: int, calib_images,
                  weights: str = "fp32"):  # fmt: skip
    """Fail before any work on options that cannot succeed."""
    if weights not in E.WEIGHTS_ATOL:
        raise ConfigError(f"unknown weights {weights!r}; valid: {', '.join(E.WEIGHTS_ATOL)}")
    if int8 and data is None:
        raise ConfigError("--int8 needs --data: calibration uses training images")
    if calib_images < 1:
        raise ConfigError(f"--calib-images must be >= 1, got {calib_images}")
    if tensorrt is not None:
        if trt_precision not in T.PRECISIONS:
            valid = list(T.PRECISIONS)
            raise ConfigError(f"unknown --trt-precision {trt_precision!r}; valid: {valid}")
        if trt_precision == "int8" and data is None:
            raise ConfigError("--trt-precision int8 needs --data: calibration uses training images")
        T.profile_shapes(max_batch)
        T.import_tensorrt()  # now, not after minutes of export


def export_int8(fp32: E.Export, ds, val, calib_images: int, bench: bool) -> dict:
    """Quantize for the CPU, compare with the fp32 model on val, attach its own metadata."""
    calib = Q.calibration_images(ds.train.x, calib_images)
    source = E.load_fp16(fp32.model) if fp32.card.weights == "fp16" else fp32.model
    model = Q.quantize_int8(source, calib, target="cpu")
    E.check_structure(model)
    report = {"calibration_images": len(calib), **compare_int8(fp32, model, val)}
    if bench:
        report["img_per_s"] = speed(fp32.model, model)
    acc = {k: report[k] for k in ("val_top1", "val_top5", "val_images")}
    E.set_metadata(model, replace(fp32.card, precision="int8", **acc))
    return {"model": model, "report": report}


def compare_int8(fp32: E.Export, model, val) -> dict:
    """Val accuracy of the INT8 model and its top-1 agreement with fp32; fails if it is broken."""
    x, y = val
    logits = E.run_onnx(E.session(model), x)
    parity = E.compare(fp32.val_logits, logits)
    acc = topk_accuracy(logits, y)
    change = 100 * (acc["top1"] - fp32.card.val_top1)
    print(f"int8 val: top-1 {acc['top1']:.2%} (fp32 {fp32.card.val_top1:.2%}, change "
          f"{change:+.2f} points; target ≥ -{100 * INT8_TARGET_DROP:g}), top-1 agreement with "
          f"fp32 {parity.top1_agreement:.2%}")  # fmt: skip
    if parity.top1_agreement < INT8_MIN_AGREEMENT:
        raise E.ParityError(f"INT8 model broken against fp32: {parity.describe()}")
    return {"val_top1": acc["top1"], "val_top5": acc["top5"], "val_images": len(y),
            "top1_change_points": change, "vs_fp32": asdict(parity)}  # fmt: skip


def speed(fp32_model, int8_model, batch: int = BENCH_BATCH) -> dict:
    threads = os.cpu_count()
    fp32 = Q.throughput(fp32_model, batch, threads)
    int8 = Q.throughput(int8_model, batch, threads)
    print(f"speed at batch {batch} on {threads} threads: fp32 {fp32:.0f} img/s, "
          f"int8 {int8:.0f} img/s ({int8 / fp32:.2f}×)")  # fmt: skip
    return {"batch": batch, "threads": threads, "fp32": fp32, "int8": int8}


def export_tensorrt(fp32_path: Path, fp32: E.Export, ds, engine, precision, max_batch, calib_n):
    """Build the engine: fp32/fp16 from the fp32 ONNX, int8 from a symmetric Q/DQ ONNX."""
    src = fp32_path
    if precision == "int8":
        calib = Q.calibration_images(ds.train.x, calib_n)
        qdq = Q.quantize_int8(fp32.model, calib, target="tensorrt")
        src = E.save(qdq, Path(engine).with_suffix(".qdq.onnx"))
    path = T.build_engine(src, engine, precision=precision, max_batch=max_batch)
    print(f"TensorRT {precision} engine: {path} (batch 1..{max_batch}) from {src}")
    report = {"engine": str(path), "precision": precision, "max_batch": max_batch, "onnx": str(src)}
    return report | check_engine(path, fp32)


def check_engine(path: Path, fp32: E.Export, n: int = 256) -> dict:
    """The engine against ONNX Runtime's fp32 logits (reported, not enforced: fp16 and int8 differ
    by design), on val images where the export had them, else random ones."""
    import torch

    if not torch.cuda.is_available():
        return {}
    x = random_images(n) if fp32.val_inputs is None else fp32.val_inputs[:n]
    ref = E.run_onnx(E.session(fp32.model), x)
    got = T.EngineRunner(path).logits(torch.from_numpy(np.ascontiguousarray(x)).cuda())
    parity = E.compare(ref, got.cpu().numpy())
    print(f"TensorRT vs ONNX Runtime fp32: {parity.describe()}")
    return {"vs_onnxruntime_fp32": asdict(parity)}


def export(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    int8: bool = False,
    calib_images: int = 512,
    tensorrt: str | os.PathLike | None = None,
    trt_precision: str = "fp16",
    max_batch: int = 64,
    bench: bool = True,
    count_unfolded: bool = True,
    weights: str = "fp32",
) -> dict:
    """`python -m export`: write the models and NAME.export.json; return the report."""
    check_options(data=data, int8=int8, tensorrt=tensorrt, trt_precision=trt_precision,
                  max_batch=max_batch, calib_images=calib_images, weights=weights)  # fmt: skip
    model, ckpt = load_model(checkpoint)
    ds, val = E.load_val(data, ckpt) if data is not None else (None, None)
    fp32 = E.export_fp32(model, ckpt, checkpoint_sha256=file_sha256(checkpoint), val=val,
                         count_unfolded=count_unfolded, weights=weights)  # fmt: skip
    out = E.save(fp32.model, out)
    report = {"checkpoint": str(checkpoint), "fp32": {"path": str(out), **fp32.summary()}}
    if int8:
        q = export_int8(fp32, ds, val, calib_images, bench)
        report["int8"] = {"path": str(E.save(q["model"], int8_path(out))), **q["report"]}
    if tensorrt is not None:
        report["tensorrt"] = export_tensorrt(out, fp32, ds, tensorrt, trt_precision, max_batch,
                                             calib_images)  # fmt: skip
    path = out.with_name(f"{out.stem}.export.json")
    path.write_text(json.dumps(report, indent=1, default=_jsonable) + "\n")
    print(f"wrote {', '.join(_paths(report))} and {path}")
    return report


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _paths(report: dict) -> list[str]:
    return [part[k] for part in report.values() if isinstance(part, dict)
            for k in ("path", "engine") if k in part]  # fmt: skip

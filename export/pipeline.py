"""The export as one call: a checkpoint (or an exported ONNX) → the checked model and its forms.

    from export.pipeline import export
    report = export("runs/final/best.pt", "models/model.onnx", data=ZIP, int8=True)
    report = export("models/model.onnx", "models/model-flip.onnx", data=ZIP, tta_flip=True)

Files, for `out` = models/NAME.onnx:
    models/NAME.onnx              fp32 compute with activation maps, checked against its source
                                  (PyTorch for a checkpoint, ONNX Runtime for an ONNX file)
    models/NAME.int8.onnx         --int8: NNCF QDQ, for ONNX Runtime on CPUs
    models/NAME.int8.xml, .bin    --int8: NNCF OpenVINO IR, for OpenVINO on CPUs
    models/NAME.export.json       what was measured (node counts, parity, accuracy, speed)
    ENGINE, ENGINE.qdq.onnx       --tensorrt ENGINE (int8: the symmetric Q/DQ model it came from)

With val images, a temperature fitted on half of them is folded into the head's weight and bias
(export/calibration.py): probabilities that mean what they say, the ranking and the maps' invariant
unchanged; refused when it does not lower NLL on the other half.

Every form is checked on the val images and refused with the figures when it misses its bar:
fp32 logits within 1e-4 of the source (1e-2 with fp16-stored weights); INT8 within
contract.INT8_MAX_DROP_POINTS of fp32's top-1 and agreeing with it on INT8_MIN_AGREEMENT of the
images; every form's maps adding up to its logits (mean(cam) + bias within 1e-3).

An ONNX source is how an export without its checkpoint gains what this version adds (the maps,
test-time augmentation) and how its INT8 forms are made: the graph is rewritten, not retrained.
Serving needs none of this module: it reads the files and inference/contract.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx

from export import calibration as K
from export import graph as G
from export import onnx_export as E
from export import quantize as Q
from export import tensorrt as T
from inference import contract as C
from inference.contract import random_images
from training.checkpoint import file_sha256, load_model
from training.config import ConfigError

BENCH_BATCH = 64


def check_options(*, source, data, int8: bool, tensorrt, trt_precision: str, max_batch: int,
                  calib_images, weights: str = "fp32", tta_size=None,
                  calibrate=None):  # fmt: skip
    """Fail before any work on options that cannot succeed."""
    if calibrate is not None and calibrate not in K.METHODS:
        raise ConfigError(f"unknown --calibrate {calibrate!r}; valid: {', '.join(K.METHODS)}")
    if calibrate not in (None, "none") and data is None:
        raise ConfigError(f"--calibrate {calibrate} needs --data: it is fitted on val images")
    if weights not in E.WEIGHTS_ATOL:
        raise ConfigError(f"unknown weights {weights!r}; valid: {', '.join(E.WEIGHTS_ATOL)}")
    if int8 and data is None:
        raise ConfigError("--int8 needs --data: calibration uses training images")
    if calib_images < 1:
        raise ConfigError(f"--calib-images must be >= 1, got {calib_images}")
    if tta_size is not None and not 32 <= tta_size <= 256:
        raise ConfigError(f"--test-size must be between 32 and 256 pixels, got {tta_size}")
    if is_onnx(source) and weights != "fp32":
        raise ConfigError("--weights applies to a checkpoint; an ONNX source keeps its storage")
    if tensorrt is not None:
        if trt_precision not in T.PRECISIONS:
            valid = list(T.PRECISIONS)
            raise ConfigError(f"unknown --trt-precision {trt_precision!r}; valid: {valid}")
        if trt_precision == "int8" and data is None:
            raise ConfigError("--trt-precision int8 needs --data: calibration uses training images")
        T.profile_shapes(max_batch)
        T.import_tensorrt()  # now, not after minutes of export


def is_onnx(source) -> bool:
    return Path(source).suffix == ".onnx"


# --- the fp32 model --------------------------------------------------------------------------


def from_checkpoint(path, data, weights: str, count_unfolded=True) -> tuple[E.Export, object, dict]:
    """(the checked fp32 export, the dataset, what it came from) of a training checkpoint."""
    model, ckpt = load_model(path)
    ds, val = E.checkpoint_val(data, ckpt) if data is not None else (None, None)
    fp32 = E.export_fp32(model, ckpt, checkpoint_sha256=file_sha256(path), val=val,
                         weights=weights, count_unfolded=count_unfolded)  # fmt: skip
    return fp32, ds, {"checkpoint": str(path)}


def from_onnx(path, data) -> tuple[E.Export, object, dict]:
    """(the checked fp32 export, the dataset, what it came from) of an exported ONNX: the maps
    added where it has none, compared with the file as it was on random and val images."""
    source = onnx.load(str(path))
    card = C.ModelCard.of(source)  # ContractError: not one of our exports
    if card.precision != "fp32":
        raise ConfigError(f"{path} is a {card.precision} form: export from the fp32 model")
    has_cam = C.OUTPUT_CAM in [o.name for o in source.graph.output]
    E.check_structure(source, cam=has_cam)
    model = source if has_cam else G.add_cam(source)
    E.check_structure(model)
    bias, atol = G.head_bias(model), E.WEIGHTS_ATOL["fp32"]  # the same weights: fp32 rounding
    ref, new = E.session(source), E.session(model)
    ds, val = E.load_val(data, card.wnids) if data is not None else (None, None)
    checks = _inputs(val)
    parity, errors, logits = {}, [], None
    for name, x in checks:
        logits, cam = E.run_outputs(new, x, [C.OUTPUT_LOGITS, C.OUTPUT_CAM])
        parity[name] = E.check_parity(name, E.run_onnx(ref, x), logits, atol)
        errors.append(E.check_cam(name, logits, cam, bias))
    fields = E.accuracy_fields(logits, val[1]) if val else {}
    card = replace(card, cam_size=tuple(E.cam_size(model)), gflops=G.gflops(model),
                   exported_at=E.now(), versions=E.versions(), **fields)  # fmt: skip
    E.set_metadata(model, card)
    fp32 = E.Export(model, card, None, E.op_counts(model), parity, bias, max(errors),
                    logits if val else None, val[0] if val else None)  # fmt: skip
    return fp32, ds, {"source": str(path), "source_sha256": file_sha256(path)}


def _inputs(val) -> list[tuple[str, np.ndarray]]:
    """The images a rewritten graph is checked on: a random batch, and val where given."""
    return [("random batch 64", random_images(64))] + ([("val", val[0])] if val else [])


def with_tta(fp32: E.Export, val, flip: bool, size: int | None) -> E.Export:
    """The fp32 model with test-time augmentation in its graph (export/graph.py `add_tta`):
    no parity to check (it answers differently on purpose), the maps' invariant still holds."""
    size = size or C.IMAGE_SIZE
    model = G.add_tta(fp32.model, flip=flip, size=size)
    E.check_structure(model)
    sess = E.session(model)
    checks = _inputs(val)
    errors, logits = [], None
    for name, x in checks:
        logits, cam = E.run_outputs(sess, x, [C.OUTPUT_LOGITS, C.OUTPUT_CAM])
        errors.append(E.check_cam(f"{name} (TTA)", logits, cam, fp32.bias))
    fields = E.accuracy_fields(logits, val[1], "fp32, TTA") if val else {}
    card = replace(fp32.card, tta={"flip": flip, "size": size}, gflops=G.gflops(model),
                   cam_size=tuple(E.cam_size(model)), **fields)  # fmt: skip
    E.set_metadata(model, card)
    val_logits = logits if val else None
    return replace(fp32, model=model, card=card, parity={}, cam_error=max(errors),
                   val_logits=val_logits, nodes_after=E.op_counts(model))  # fmt: skip


# --- calibration -------------------------------------------------------------------------------


def with_calibration(fp32: E.Export, val, method: str) -> E.Export:
    """The model with a temperature fitted on half of val folded into its head
    (export/calibration.py, export/graph.py `scale_logits`), checked: its logits times T are the
    logits it had (so the ranking is too) on random and val images, and its maps add up to them.
    A source that already carries a temperature is fitted afresh from its raw logits, so the card's
    temperature is always the whole one and its `before` the uncalibrated model."""
    old = (fp32.card.calibration or {}).get("temperature", 1.0)
    record = K.fit(fp32.val_logits * old, val[1], method)
    factor = old / record["temperature"]
    model = G.scale_logits(fp32.model, factor, {"temperature": record["temperature"]})
    E.check_structure(model)
    bias, atol = G.head_bias(model), E.WEIGHTS_ATOL[fp32.card.weights]
    ref, new = E.session(fp32.model), E.session(model)
    parity, errors, logits = dict(fp32.parity), [], None
    for name, x in _inputs(val):
        logits, cam = E.run_outputs(new, x, [C.OUTPUT_LOGITS, C.OUTPUT_CAM])
        before = fp32.val_logits if name == "val" else E.run_onnx(ref, x)
        parity[f"{name}, calibrated"] = check_scaled(name, before, logits, factor, atol)
        errors.append(E.check_cam(f"{name} (calibrated)", logits, cam, bias))
    card = replace(fp32.card, calibration=record)
    E.set_metadata(model, card)
    return replace(fp32, model=model, card=card, parity=parity, bias=bias, cam_error=max(errors),
                   val_logits=logits)  # fmt: skip


def check_scaled(name: str, before, after, factor: float, atol: float) -> E.Parity:
    """after / factor against before: the fold changed the logits' scale and nothing else."""
    parity = E.compare(before, after / factor)
    print(f"calibrated {name}: logits / {factor:.4g} against the model's: {parity.describe()}")
    if not parity.ok(atol):
        raise E.ParityError(f"the calibrated model's logits / {factor:.4g} differ from the model's "
                            f"on {name}: {parity.describe()} (allowed: {atol:g})")  # fmt: skip
    return parity


# --- INT8 ------------------------------------------------------------------------------------


INT8_BAR = (C.INT8_MAX_DROP_POINTS, C.INT8_MIN_AGREEMENT)


def int8_forms(fp32: E.Export, out: Path, ds, val, calib_images: int, bench: bool,
               bar=INT8_BAR) -> dict:  # fmt: skip
    """NAME.int8.onnx (ONNX Runtime) and NAME.int8.xml (OpenVINO), each checked against fp32 on
    val and refused (nothing written) when it misses the bar: (top-1 points it may lose, share
    of images whose top-1 it must keep)."""
    calib = Q.calibration_images(ds.train.x, calib_images)
    onnx_path, ir_path = C.int8_paths(out)
    report = {"calibration_images": len(calib)}

    q = Q.int8_onnx(fp32.model, calib)
    logits, cam = E.run_outputs(E.session(q), val[0], [C.OUTPUT_LOGITS, C.OUTPUT_CAM])
    parity = check_form("ONNX Runtime INT8", fp32, logits, cam, val[1], bar)
    E.set_metadata(q, _int8_card(fp32.card, parity, logits, val[1]))
    report["onnxruntime"] = {"path": str(E.save(q, onnx_path)), **parity}

    ov = Q.int8_openvino(fp32.model, calib)
    logits, cam = Q.run_openvino(ov, val[0], (C.OUTPUT_LOGITS, C.OUTPUT_CAM))
    parity = check_form("OpenVINO INT8", fp32, logits, cam, val[1], bar)
    card = _int8_card(fp32.card, parity, logits, val[1])
    report["openvino"] = {"path": str(Q.save_openvino(ov, ir_path, card)), **parity}
    if bench:
        report["img_per_s"] = speed(fp32.model, q)
    return report


def check_form(name: str, fp32: E.Export, logits, cam, labels, bar=INT8_BAR) -> dict:
    """A reduced-precision form's figures against fp32 on val; ParityError past the bar."""
    max_drop, min_agreement = bar
    acc = E.topk_accuracy(logits, labels)
    parity = E.compare(fp32.val_logits, logits)
    change = 100 * (acc["top1"] - fp32.card.val_top1)
    figures = {
        "reference": "fp32",
        "images": len(labels),
        "val_top1": acc["top1"],
        "val_top5": acc["top5"],
        "top1_change_points": round(change, 4),
        "top1_agreement": parity.top1_agreement,
        "max_abs_logit_diff": parity.max_abs_logit_diff,
        "cam_invariant_max_error": E.cam_error(logits, cam, fp32.bias),
    }
    print(f"{name} val: top-1 {acc['top1']:.2%} (fp32 {fp32.card.val_top1:.2%}, {change:+.2f} "
          f"points), agrees with fp32 on {parity.top1_agreement:.2%}, maps "
          f"{figures['cam_invariant_max_error']:.1e}")  # fmt: skip
    misses = []
    if change < -max_drop:
        misses.append(f"top-1 {change:+.2f} points (allowed: -{max_drop:g})")
    if parity.top1_agreement < min_agreement:
        misses.append(f"top-1 agreement {parity.top1_agreement:.2%} (needed: {min_agreement:.0%})")
    if not figures["cam_invariant_max_error"] <= E.CAM_ATOL:
        misses.append(f"maps off their logits by {figures['cam_invariant_max_error']:.3g}")
    if misses:
        raise E.ParityError(f"{name} refused against fp32 on val: {'; '.join(misses)}")
    return figures


def _int8_card(card: C.ModelCard, parity: dict, logits, labels) -> C.ModelCard:
    """The form's card: its own accuracy, parity and calibration figures (INT8 logits differ
    slightly from fp32's, so the temperature's `after` is measured again on them)."""
    acc = {k: parity[k] for k in ("val_top1", "val_top5")}
    calibration = card.calibration and K.judged(card.calibration, logits, labels)
    return replace(card, precision="int8", val_images=parity["images"], parity=parity,
                   calibration=calibration, **acc)  # fmt: skip


def speed(fp32_model, int8_model, batch: int = BENCH_BATCH) -> dict:
    threads = os.cpu_count()
    fp32 = Q.throughput(fp32_model, batch, threads)
    int8 = Q.throughput(int8_model, batch, threads)
    print(f"ONNX Runtime at batch {batch} on {threads} threads: fp32 {fp32:.0f} img/s, "
          f"int8 {int8:.0f} img/s ({int8 / fp32:.2f}×)")  # fmt: skip
    return {"batch": batch, "threads": threads, "fp32": fp32, "int8": int8}


# --- TensorRT (untested: it cannot be installed on the machines this project has run on) -----


def export_tensorrt(fp32_path: Path, fp32: E.Export, ds, engine, precision, max_batch, calib_n):
    """Build the engine: fp32/fp16 from the fp32 ONNX, int8 from a symmetric Q/DQ ONNX."""
    src = fp32_path
    if precision == "int8":
        calib = Q.calibration_images(ds.train.x, calib_n)
        src = E.save(Q.tensorrt_qdq(fp32.model, calib), Path(engine).with_suffix(".qdq.onnx"))
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


# --- the whole step --------------------------------------------------------------------------


def export(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    int8: bool = False,
    calib_images: int = 512,
    tta_flip: bool = False,
    tta_size: int | None = None,
    calibrate: str | None = None,
    tensorrt: str | os.PathLike | None = None,
    trt_precision: str = "fp16",
    max_batch: int = 64,
    bench: bool = True,
    weights: str = "fp32",
    int8_bar: tuple[float, float] = INT8_BAR,
    count_unfolded: bool = True,
) -> dict:
    """`python -m export`: write the models and NAME.export.json; return the report. `source` is
    a training checkpoint, or an exported fp32 ONNX (rewritten, not re-exported from torch).
    `calibrate`: "temperature" (the default with `data`: where it does not lower NLL on the
    val half it was not fitted on it is left out, with a warning; asked for by name, that is an
    error), "temperature-nll", or "none" (the logits as they come)."""
    check_options(source=source, data=data, int8=int8, tensorrt=tensorrt, tta_size=tta_size,
                  trt_precision=trt_precision, max_batch=max_batch, calib_images=calib_images,
                  weights=weights, calibrate=calibrate)  # fmt: skip
    explicit, calibrate = calibrate is not None, calibrate or ("temperature" if data else "none")
    if is_onnx(source):
        fp32, ds, origin = from_onnx(source, data)
    else:
        fp32, ds, origin = from_checkpoint(source, data, weights, count_unfolded)
    val = None if fp32.val_inputs is None else (fp32.val_inputs, _labels(ds, fp32))
    if tta_flip or (tta_size or C.IMAGE_SIZE) != C.IMAGE_SIZE:
        fp32 = with_tta(fp32, val, tta_flip, tta_size)
    refused = None
    if calibrate != "none":
        try:
            fp32 = with_calibration(fp32, val, calibrate)
        except K.CalibrationError as e:
            if explicit:  # asked for by name: not having it is a failure
                raise
            # The default: a temperature that would not help is left out, and said so.
            refused = str(e)
            print(f"warning: {refused}; exported without calibration")
    out = E.save(fp32.model, out)
    report = {**origin, "fp32": {"path": str(out), **fp32.summary()}}
    if fp32.card.calibration is not None or refused:
        report["calibration"] = fp32.card.calibration or {"refused": refused}
    if int8:
        report["int8"] = int8_forms(fp32, out, ds, val, calib_images, bench, int8_bar)
    if tensorrt is not None:
        report["tensorrt"] = export_tensorrt(out, fp32, ds, tensorrt, trt_precision, max_batch,
                                             calib_images)  # fmt: skip
    path = out.with_name(f"{out.stem}.export.json")
    path.write_text(json.dumps(report, indent=1, default=_jsonable) + "\n")
    print(f"wrote {', '.join(_paths(report))} and {path}")
    return report


def _labels(ds, fp32: E.Export) -> np.ndarray:
    return np.asarray(ds.val.y[: len(fp32.val_inputs)])


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _paths(report: dict) -> list[str]:
    found = []
    for part in report.values():
        if isinstance(part, dict):
            found += [part[k] for k in ("path", "engine") if k in part]
            found += [v["path"] for v in part.values() if isinstance(v, dict) and "path" in v]
    return found

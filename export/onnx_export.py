"""A training checkpoint → a self-describing fp32 ONNX model that follows inference/contract.py.

The graph takes uint8 NHWC RGB images and normalises inside (so serving only decodes and resizes),
runs the folded network (export/fold.py) and returns logits and their softmax. It is written with
torch's dynamo exporter (opset 18, dynamic batch), checked for leftover BatchNormalization and
Dropout nodes, and compared with the original PyTorch model under ONNX Runtime before it is
saved: a mismatch raises `ParityError` with the figures.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from export.fold import fold_model
from export.graph import add_cam, head_bias
from inference import contract as C
from inference.contract import random_images
from training.checkpoint import file_sha256, load_model
from training.evaluate import predict, topk_accuracy
from training.summary import count_macs

OPSET = 18  # ≥ 17 (LayerNorm-era opsets); 18 is what torch 2.13's dynamo exporter emits natively
FORBIDDEN_OPS = ("BatchNormalization", "Dropout")
LOGIT_ATOL = 1e-4  # fp32 ONNX Runtime vs PyTorch, max abs logit difference
# Storing the folded weights as fp16 rounds each to 11 bits; on the shipped ResNet-34 that moved
# logits by at most 4.35e-3 over the 5000 val images (top-1 identical on all): 1e-2 allows 2x that.
WEIGHTS_ATOL = {"fp32": LOGIT_ATOL, "fp16": 1e-2}


# The exporter logs a warning per torchvision op it cannot register; this network has none.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class ExportError(ValueError):
    """The checkpoint or the exported graph cannot become a model of the contract."""


class ParityError(ExportError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance; the message gives the figures."""


# --- the graph -----------------------------------------------------------------------------------


class ImageClassifier(nn.Module):
    """uint8 (N, 64, 64, 3) RGB → (logits, probabilities): the contract's graph in PyTorch."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        # (x − mean)/std as one Mul and one Add, in 0..255 units as the checkpoint stores them.
        std = torch.tensor(std, dtype=torch.float64)
        self.register_buffer("scale", (1 / std).float().view(1, 3, 1, 1))
        shift = -torch.tensor(mean, dtype=torch.float64) / std
        self.register_buffer("shift", shift.float().view(1, 3, 1, 1))

    def forward(self, image):
        # contiguous(): the permuted NHWC view is channels_last in memory, and the dynamo exporter
        # then writes the head's flatten as Shape/Range/Gather/as_strided (measured: 10 extra
        # nodes); in standard layout it is one Reshape.
        x = image.permute(0, 3, 1, 2).float().contiguous()
        logits = self.net(x * self.scale + self.shift)
        return logits, torch.softmax(logits, dim=1)


def to_onnx(module: nn.Module, opset: int = OPSET) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) with a dynamic batch dimension named as in the contract."""
    example = torch.zeros(2, C.IMAGE_SIZE, C.IMAGE_SIZE, 3, dtype=torch.uint8)  # 2: not specialised
    batch = torch.export.Dim("N", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about its own internals
        program = torch.onnx.export(
            module.eval(),
            (example,),
            input_names=[C.INPUT_NAME],
            output_names=[C.OUTPUT_LOGITS, C.OUTPUT_PROBABILITIES],
            dynamic_shapes={"image": {0: batch}},
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    onnx.checker.check_model(proto)
    return proto


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts = collections.Counter(node.op_type for node in model.graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def check_structure(model: onnx.ModelProto, cam: bool = True) -> None:
    """The graph has the contract's input and outputs (without `cam`: as torch's exporter writes
    it, before export/graph.py adds the maps) and no op that folding should have removed."""
    left = {op: n for op, n in op_counts(model).items() if op in FORBIDDEN_OPS}
    if left:
        raise ExportError(f"the exported graph still has {left} nodes")
    (inp,) = model.graph.input
    t = inp.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in t.shape.dim]
    image = [C.IMAGE_SIZE, C.IMAGE_SIZE, 3]
    if inp.name != C.INPUT_NAME or t.elem_type != onnx.TensorProto.UINT8 or dims[1:] != image:
        raise ExportError(f"graph input is {inp.name} {t.elem_type} {dims}, not uint8 (N,64,64,3)")
    if not t.shape.dim[0].dim_param:
        raise ExportError(f"graph input's batch dimension is fixed at {dims[0]}, not dynamic")
    outputs = [o.name for o in model.graph.output]
    if outputs != list(C.OUTPUTS if cam else C.OUTPUTS[:2]):
        raise ExportError(f"graph outputs are {outputs}")


# --- metadata ------------------------------------------------------------------------------------


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}


def model_card(ckpt: dict, checkpoint_sha256: str | None, **fields) -> C.ModelCard:
    """The contract's metadata for a checkpoint; `fields` override (precision, val_top1, ...)."""
    classes, prep = ckpt["classes"], ckpt["preprocessing"]
    card = {
        "wnids": tuple(classes["wnids"]),
        "names": tuple(classes["names"]),
        "mean": tuple(float(v) for v in prep["mean"]),
        "std": tuple(float(v) for v in prep["std"]),
        "preset": ckpt.get("preset"),
        "checkpoint_sha256": checkpoint_sha256,
        "model_config": dict(ckpt["config"]["model"]),
        "exported_at": now(),
        "versions": versions(),
    }
    return C.ModelCard(**{**card, **fields})


def set_metadata(model: onnx.ModelProto, card: C.ModelCard) -> onnx.ModelProto:
    """Replace the model's metadata_props with the card's (plus the input contract, for humans)."""
    del model.metadata_props[:]
    props = {**card.to_metadata(), "input": json.dumps(card.input)}
    onnx.helper.set_model_props(model, props)
    model.doc_string = (
        f"Tiny ImageNet classifier ({card.precision}, {len(card.wnids)} classes). Input "
        f"'{C.INPUT_NAME}': uint8 (N,64,64,3) RGB, normalised inside; outputs "
        f"{', '.join(repr(o) for o in C.OUTPUTS)}. See metadata_props."
    )
    return model


def store_fp16(model: onnx.ModelProto, min_size: int = 1024) -> onnx.ModelProto:
    """`model` with each float initializer of `min_size` or more elements stored as fp16 behind a
    Cast to fp32, in place. Why: it halves the file (the shipped ResNet-34: 85.8 → 43.0 MB, under
    the repository's 45 MB for models/) while compute stays fp32; ONNX Runtime folds the Casts when
    it loads the model (fp32 and fp16-stored ran at the same speed, 2 CPU threads, batch 64)."""
    from onnx import helper, numpy_helper

    graph, kept, casts = model.graph, [], []
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype != np.float32 or arr.size < min_size:
            kept.append(init)
            continue
        with np.errstate(over="ignore"):  # overflow is checked just below, with the name
            half = arr.astype(np.float16)
        if not np.isfinite(half).all():
            raise ExportError(f"weight {init.name} exceeds fp16's range (|w| ≤ 65504): keep fp32")
        kept.append(numpy_helper.from_array(half, f"{init.name}.fp16"))
        cast = helper.make_node(
            "Cast", [f"{init.name}.fp16"], [init.name], to=onnx.TensorProto.FLOAT
        )
        casts.append(cast)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)  # Casts first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def load_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The inverse of `store_fp16`, as a copy: fp32 initializers (of the fp16 values), no Casts.
    For tools that expect weights as initializers, such as ONNX Runtime's quantizer."""
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    casts = [n for n in graph.node if n.op_type == "Cast" and n.input[0] in inits]
    for node in casts:
        half = inits.pop(node.input[0])
        inits[node.output[0]] = numpy_helper.from_array(
            numpy_helper.to_array(half).astype(np.float32), node.output[0]
        )
    nodes = [n for n in graph.node if not any(n is c for c in casts)]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(inits.values())
    return out


def save(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write atomically: a server watching the folder never loads half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


# --- running and comparing -----------------------------------------------------------------------


def session(model, threads: int | None = None) -> ort.InferenceSession:
    """A CPU InferenceSession from a path or a ModelProto."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run_outputs(sess, images: np.ndarray, names, batch_size: int = 256) -> list[np.ndarray]:
    """The named outputs for uint8 images (N, 64, 64, 3), run in batches."""
    parts = [[] for _ in names]
    for i in range(0, len(images), batch_size):
        feed = {C.INPUT_NAME: np.ascontiguousarray(images[i : i + batch_size])}
        for part, out in zip(parts, sess.run(list(names), feed), strict=True):
            part.append(out)
    return [np.concatenate(p) if p else np.zeros((0, 0), np.float32) for p in parts]


def run_onnx(sess: ort.InferenceSession, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits (N, C) float32 for uint8 images (N, 64, 64, 3)."""
    return run_outputs(sess, images, [C.OUTPUT_LOGITS], batch_size)[0]


# The activation maps' invariant, mean(cam) + bias = logits (export/graph.py computes the logits
# from the maps): 1e-6 is what fp32 rounding leaves; a map that is not the logits' is off by 0.1+.
CAM_ATOL = 1e-3


def cam_error(logits: np.ndarray, cam: np.ndarray, bias: np.ndarray) -> float:
    """max |mean(cam) + bias − logits| over images and classes."""
    if len(logits) == 0:
        return 0.0
    mean = cam.astype(np.float64).mean(axis=(2, 3))
    return float(np.abs(mean + bias - logits).max())


def check_cam(name: str, logits: np.ndarray, cam: np.ndarray, bias: np.ndarray) -> float:
    error = cam_error(logits, cam, bias)
    print(f"activation maps {name}: max |mean(cam) + bias - logits| {error:.2e}")
    if not error <= CAM_ATOL:
        raise ParityError(
            f"the activation maps of {name} do not add up to the logits: max |mean(cam) + bias "
            f"- logits| is {error:.3g} (allowed: {CAM_ATOL:g})"
        )
    return error


def run_torch(model: nn.Module, images: np.ndarray, mean, std, batch_size: int = 256) -> np.ndarray:
    """The reference: training's own evaluation path (training/evaluate.py), fp32 on the CPU."""
    return predict(model, images, mean, std, batch_size=batch_size).numpy()


# Top-1 may differ on at most this share of the images. With every logit within atol, a flip can
# only happen where the reference's two classes are within 2·atol (a near tie, reported below);
# a broken graph flips many. The shipped ResNet-34 with fp16-stored weights flipped 1 of 5000 val
# images, at a reference margin of 1.77e-3 under its 1e-2 tolerance.
MAX_TIE_FLIPS = 1e-3


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_logit_diff: float
    top1_agreement: float  # share of images whose top-1 class is the same
    top1_mismatches: int
    # Largest reference logit gap between its top-1 and the other model's pick where they differ.
    max_margin_overturned: float | None

    def ok(self, atol: float = LOGIT_ATOL) -> bool:
        flips_ok = self.top1_mismatches <= MAX_TIE_FLIPS * self.images
        return self.max_abs_logit_diff <= atol and flips_ok

    def describe(self) -> str:
        s = (
            f"{self.images} images: max |Δlogit| {self.max_abs_logit_diff:.2e}, "
            f"top-1 agreement {self.top1_agreement:.2%} ({self.top1_mismatches} differ)"
        )
        if self.max_margin_overturned is not None:
            s += f", at reference margins up to {self.max_margin_overturned:.2e}"
        return s


def compare(reference: np.ndarray, other: np.ndarray) -> Parity:
    if reference.shape != other.shape:
        raise ParityError(f"logits of shape {other.shape}, expected {reference.shape}")
    n = len(reference)
    diff = float(np.abs(reference - other).max()) if n else 0.0
    top_ref, top_other = reference.argmax(1), other.argmax(1)
    differ = np.flatnonzero(top_ref != top_other)
    margin = None
    if len(differ):
        rows = reference[differ]
        gap = (
            rows[np.arange(len(differ)), top_ref[differ]]
            - rows[np.arange(len(differ)), top_other[differ]]
        )
        margin = float(gap.max())
    agree = 1.0 - len(differ) / n if n else 1.0
    return Parity(n, diff, agree, len(differ), margin)


def check_parity(name: str, reference: np.ndarray, other: np.ndarray, atol=LOGIT_ATOL) -> Parity:
    parity = compare(reference, other)
    print(f"parity {name}: {parity.describe()}")
    if not parity.ok(atol):
        raise ParityError(
            f"ONNX Runtime differs from PyTorch on {name}: {parity.describe()} (allowed: max "
            f"|Δlogit| ≤ {atol:g}; top-1 differing on at most {MAX_TIE_FLIPS:.1%} of images)"
        )
    return parity


# --- the whole step ------------------------------------------------------------------------------


@dataclass
class Export:
    """What `export_fp32` made and measured."""

    model: onnx.ModelProto
    card: C.ModelCard
    nodes_before: dict[str, int] | None  # the unfolded network through the same exporter
    nodes_after: dict[str, int]
    parity: dict[str, Parity]
    bias: np.ndarray  # the classifier's, for checking the maps of every form
    cam_error: float  # the largest over every image checked
    val_logits: np.ndarray | None = None  # ONNX Runtime's, for comparing the INT8 model with
    val_inputs: np.ndarray | None = None

    def summary(self) -> dict:
        return {
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "parity": {k: asdict(v) for k, v in self.parity.items()},
            "cam_invariant_max_error": self.cam_error,
            "val_top1": self.card.val_top1,
            "val_top5": self.card.val_top5,
        }


def export_fp32(
    model: nn.Module,
    ckpt: dict,
    *,
    checkpoint_sha256: str | None = None,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    random_batches=(1, 7, 64),
    count_unfolded: bool = True,
    weights: str = "fp32",
) -> Export:
    """Fold, export, add the activation maps (export/graph.py), check structure, parity and the
    maps' invariant (random images at each of `random_batches`, and the val images when given),
    and attach metadata with the val accuracy measured in ONNX. `weights="fp16"` stores the
    weights as fp16 (`store_fp16`); parity then allows its rounding."""
    if weights not in WEIGHTS_ATOL:
        raise ExportError(f"unknown weights {weights!r}; valid: {', '.join(WEIGHTS_ATOL)}")
    atol = WEIGHTS_ATOL[weights]
    mean, std = ckpt["preprocessing"]["mean"], ckpt["preprocessing"]["std"]
    folded = fold_model(model)
    proto = to_onnx(ImageClassifier(folded, mean, std))
    check_structure(proto, cam=False)
    proto = add_cam(proto)
    check_structure(proto)
    bias = head_bias(proto)
    if weights == "fp16":
        proto = store_fp16(proto)
    before = op_counts(to_onnx(ImageClassifier(model, mean, std))) if count_unfolded else None
    after = op_counts(proto)
    print(f"nodes: {sum(after.values())} after folding {after}")
    if before is not None:
        print(f"nodes: {sum(before.values())} unfolded {before}")

    sess = session(proto)
    parity, errors = {}, []
    for i, n in enumerate(random_batches):
        x = random_images(n, seed=i)
        logits, cam = run_outputs(sess, x, [C.OUTPUT_LOGITS, C.OUTPUT_CAM], n)
        name = f"random batch {n}"
        parity[name] = check_parity(name, run_torch(model, x, mean, std), logits, atol)
        errors.append(check_cam(name, logits, cam, bias))
    fields, logits = {}, None
    if val is not None:
        logits, cam = run_outputs(sess, val[0], [C.OUTPUT_LOGITS, C.OUTPUT_CAM])
        parity["val"] = check_parity("val", run_torch(model, val[0], *(mean, std)), logits, atol)
        errors.append(check_cam("val", logits, cam, bias))
        fields = accuracy_fields(logits, val[1])
    gflops = 2 * count_macs(model) / 1e9  # for the card: serving and its benchmarks need no torch
    card = model_card(
        ckpt, checkpoint_sha256, precision="fp32", weights=weights, gflops=gflops,
        cam_size=tuple(cam_size(proto)), **fields,
    )  # fmt: skip
    set_metadata(proto, card)
    x_val = None if val is None else val[0]
    return Export(proto, card, before, after, parity, bias, max(errors), logits, x_val)


def accuracy_fields(logits: np.ndarray, labels: np.ndarray, what: str = "fp32") -> dict:
    """The card's val accuracy fields for these logits, printed."""
    acc = topk_accuracy(logits, labels)
    print(f"val: top-1 {acc['top1']:.2%}, top-5 {acc['top5']:.2%} on {len(labels)} images ({what})")
    return {"val_top1": acc["top1"], "val_top5": acc["top5"], "val_images": len(labels)}


def cam_size(model: onnx.ModelProto) -> list[int]:
    """(h, w) of the model's `cam` output, from its declared shape."""
    out = next(o for o in model.graph.output if o.name == C.OUTPUT_CAM)
    return [d.dim_value for d in out.type.tensor_type.shape.dim[2:]]


def load_val(data, wnids, classes: int | None = None, limit: int | None = None):
    """The dataset and its val split (images, labels), checked against the model's wnids."""
    from training.data import load

    ds = load(data, classes=classes)
    if tuple(ds.wnids) != tuple(wnids):
        raise ExportError(
            f"{data}: its {len(ds.wnids)} classes are not the model's {len(wnids)} "
            "(labels would not line up)"
        )
    x, y = ds.val.x[:limit], ds.val.y[:limit]
    return ds, (np.array(x), np.array(y))  # copies: torch warns on the read-only cache memmap


def checkpoint_val(data, ckpt: dict, limit: int | None = None):
    """`load_val` for a checkpoint: its classes (a subset where it trained on one)."""
    classes = ckpt["config"].get("data", {}).get("classes")
    return load_val(data, ckpt["classes"]["wnids"], classes, limit)


def export_checkpoint(
    checkpoint: str | os.PathLike, out: str | os.PathLike, *, data=None, **kwargs
) -> Export:
    """`python -m export` without INT8 or TensorRT: checkpoint → checked fp32 ONNX at `out`."""
    model, ckpt = load_model(checkpoint)
    val = checkpoint_val(data, ckpt)[1] if data is not None else None
    result = export_fp32(model, ckpt, checkpoint_sha256=file_sha256(checkpoint), val=val, **kwargs)
    save(result.model, out)
    return result

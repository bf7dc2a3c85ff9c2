"""Three rewrites of an exported classifier graph (inference/contract.py), in ONNX only.

`add_cam(model)`: class-activation maps (Zhou et al., CVPR 2016). Our heads are global average
pooling + linear, so cam_k = W_k · F over the last feature map F and mean(cam_k) + b_k = logit_k.
The head becomes cam = Conv1x1(F, W), logits = ReduceMean(cam) + b: the logits are computed *from*
the cam, so the invariant holds by construction in any precision. Ebrahimi & Abadi's nets flatten
small maps straight into the linear layer; there cam_k[y,x] = h·w·Σ_c W_k[c,y,x]·F[c,y,x] keeps it.

`scale_logits(model, factor, record)`: the head's weight and bias times `factor`, so the maps and
the logits are too: how a temperature (export/calibration.py) goes into the graph.

`add_tta(model, flip=, size=, resize=)`: test-time augmentation inside the graph of a model that
has the cam: after the in-graph normalisation the image is upsampled to size×size (FixRes) and,
with flip, run together with its mirror in one batch; the mirrored half's cam is flipped back and
the two cams averaged, so logits (their mean + b) and probabilities follow, and the invariant holds.

Both keep the weights' storage (fp16 initializers behind Casts stay so: the rewrite reshapes the
Cast's output in the graph), keep the batch dynamic, drop stale value_info and re-run shape
inference and the checker, and record what they did under the `graph_transforms` metadata key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inference.contract import OUTPUT_CAM as CAM
from inference.contract import OUTPUT_LOGITS as LOGITS

TRANSFORMS_KEY = "graph_transforms"  # JSON list; ModelCard.from_metadata ignores unknown keys
NORMALISATION_OPS = ("Transpose", "Cast", "Mul", "Add", "Sub", "Div")
# Ops whose constants could pin a spatial size inside the body (a Reshape to (-1, 512·4·4), ...).
SHAPE_PINNING_OPS = (
    "Reshape",
    "Flatten",
    "Expand",
    "Tile",
    "ConstantOfShape",
    "Einsum",
    "Gemm",
    "MatMul",
)
INT64_MIN = np.iinfo(np.int64).min


class GraphError(ValueError):
    """The graph is not one these rewrites know; the message says what was found instead."""


# --- small graph helpers -------------------------------------------------------------------------


def _producers(graph) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _consumers(graph, name: str) -> list[onnx.NodeProto]:
    return [node for node in graph.node if name in node.input]


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constant(graph, name: str) -> np.ndarray | None:
    """The value of an initializer or Constant node output, else None."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = _producers(graph).get(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(_attr(node, "value"))
    return None


def _shapes(model) -> dict[str, list]:
    """Every tensor's inferred shape (ints, or strings for symbolic/unknown dims)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {}
    for vi in [*g.value_info, *g.input, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [
            d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in dims
        ]
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out


def _fresh(graph, base: str) -> str:
    """A tensor name not used anywhere in the graph yet."""
    used = {n for node in graph.node for n in (*node.input, *node.output)}
    used |= {i.name for i in graph.initializer} | {i.name for i in graph.input}
    name, i = base, 0
    while name in used:
        i += 1
        name = f"{base}_{i}"
    return name


def _const(graph, base: str, value) -> str:
    name = _fresh(graph, base)
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _insert_after(graph, anchor: str | None, nodes: list[onnx.NodeProto]) -> None:
    """Insert `nodes` right after the producer of `anchor` (at the start when it is a graph
    input), which keeps the node list topologically sorted when they read only earlier tensors."""
    all_nodes = list(graph.node)
    at = next((i + 1 for i, n in enumerate(all_nodes) if anchor in n.output), 0)
    all_nodes[at:at] = nodes
    del graph.node[:]
    graph.node.extend(all_nodes)


def _prune(graph) -> None:
    """Drop nodes and initializers that no graph output depends on any more."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _tensor_names(graph) -> set[str]:
    """Node outputs and initializers (the exporter writes value_info for both)."""
    return {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer}


def _drop_value_info(graph, names) -> None:
    keep = [vi for vi in graph.value_info if vi.name not in set(names)]
    del graph.value_info[:]
    graph.value_info.extend(keep)


def _name_nodes(graph, prefix: str) -> None:
    """Give every unnamed node a unique name: quantizers address nodes by name (NNCF's ignored
    scope keeps the head float by naming it), and an empty name matches nothing."""
    used = {n.name for n in graph.node}
    for i, node in enumerate(graph.node):
        if not node.name:
            name = f"{prefix}_{node.op_type.lower()}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _finish(model: onnx.ModelProto, record: dict) -> onnx.ModelProto:
    """Record the transform in the metadata, name the nodes, re-infer shapes, check strictly."""
    _name_nodes(model.graph, record["transform"])
    props = {p.key: p.value for p in model.metadata_props}
    done = [*json.loads(props.get(TRANSFORMS_KEY, "[]")), record]
    props[TRANSFORMS_KEY] = json.dumps(done)
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _batch_dim(model):
    """The graph input's batch dimension (a dim_param when dynamic), to reuse on new outputs."""
    return model.graph.input[0].type.tensor_type.shape.dim[0]


# --- finding the head ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """The classifier head found from `logits` backwards."""

    feature: str  # F, the (N, C, h, w) map the head reads
    weight: str  # the linear layer's weight tensor (an initializer or a Cast's output)
    weight_kc: bool  # stored (K, C·h·w) as Gemm transB=1; False: (C·h·w, K) as MatMul/Gemm
    bias: str | None
    pooled: bool  # global average pooling (True) or flattened maps (the spec nets)
    channels: int
    height: int
    width: int
    classes: int
    found: str  # e.g. "Gemm <- Reshape <- ReduceMean", for messages


def _spatial_mean(node, graph, rank: int = 4) -> bool:
    """ReduceMean over exactly axes {2, 3} keeping dims, or GlobalAveragePool."""
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean" or _attr(node, "keepdims", 1) != 1:
        return False
    axes = _attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = _constant(graph, node.input[1])
    if axes is None:
        return False
    return sorted(int(a) % rank for a in np.ravel(axes)) == [2, 3]


def _match_linear(linear, prod, chain, fail):
    """(x, weight, bias, weight_kc) of the node producing the logits: Gemm, MatMul(+Add)."""
    if linear is None:
        fail("Gemm or MatMul+Add producing it")
    if linear.op_type == "Gemm":
        if _attr(linear, "transA", 0) or _attr(linear, "alpha", 1.0) != 1.0:
            fail("Gemm with transA=0, alpha=1")
        if len(linear.input) > 2 and _attr(linear, "beta", 1.0) != 1.0:
            fail("Gemm with beta=1")
        bias = linear.input[2] if len(linear.input) > 2 and linear.input[2] else None
        return linear.input[0], linear.input[1], bias, bool(_attr(linear, "transB", 0))
    if linear.op_type == "MatMul":
        return linear.input[0], linear.input[1], None, False
    if linear.op_type == "Add":
        mm = [prod.get(i) for i in linear.input]
        idx = [i for i, n in enumerate(mm) if n is not None and n.op_type == "MatMul"]
        if len(idx) == 1:
            chain.append("MatMul")
            matmul = mm[idx[0]]
            return matmul.input[0], matmul.input[1], linear.input[1 - idx[0]], False
    fail("Gemm, or MatMul(+Add)")


def find_head(model: onnx.ModelProto) -> Head:
    """Match linear(flatten(pool(F))) or linear(flatten(F)) backwards from `logits`; a
    GraphError names the chain found where they do not match."""
    g = model.graph
    prod = _producers(g)
    chain = []

    def step(name):
        node = prod.get(name)
        chain.append(node.op_type if node is not None else f"graph input {name!r}")
        return node

    def fail(expected):
        raise GraphError(
            f"head not recognised: found {LOGITS} <- {' <- '.join(chain)}; expected {expected}"
        )

    x, weight, bias, weight_kc = _match_linear(step(LOGITS), prod, chain, fail)
    flat = step(x)
    if flat is None or flat.op_type not in ("Reshape", "Flatten", "Squeeze"):
        fail("Reshape, Flatten or Squeeze before the linear layer")
    pool = prod.get(flat.input[0])
    pooled = pool is not None and _spatial_mean(pool, g)
    if pooled:
        chain.append(pool.op_type)
    feature = pool.input[0] if pooled else flat.input[0]

    shapes = _shapes(model)
    fshape, wshape = shapes.get(feature), shapes.get(weight)
    if not fshape or len(fshape) != 4 or not all(isinstance(d, int) for d in fshape[1:]):
        fail(f"a feature map (N, C, h, w) of known C, h, w; {feature!r} has shape {fshape}")
    if not wshape or len(wshape) != 2:
        fail(f"a 2-D weight; {weight!r} has shape {wshape}")
    _, c, h, w = fshape
    k, fan_in = wshape if weight_kc else wshape[::-1]
    if fan_in != (c if pooled else c * h * w):
        fail(
            f"a weight of fan-in {c if pooled else c * h * w} for {feature!r} {fshape}, "
            f"got {wshape}"
        )
    return Head(feature, weight, weight_kc, bias, pooled, c, h, w, k, " <- ".join(chain))


# --- the class-activation map --------------------------------------------------------------------


def _cam_nodes(g, head: Head) -> list[onnx.NodeProto]:
    """cam = W·F per position (a 1×1 Conv, or an Einsum for a flat head), then the logits as
    ReduceMean(cam) + b; constants go into `g`."""
    k, c, h, w = head.classes, head.channels, head.height, head.width
    new, weight, kernel = [], head.weight, _fresh(g, "cam_kernel")
    if not head.weight_kc:  # (fan_in, K) → (K, fan_in)
        weight = _fresh(g, "cam_weight_kc")
        new.append(helper.make_node("Transpose", [head.weight], [weight], perm=[1, 0]))
    if head.pooled:
        shape = _const(g, "cam_kernel_shape", np.array([k, c, 1, 1], np.int64))
        new.append(helper.make_node("Reshape", [weight, shape], [kernel]))
        conv = helper.make_node("Conv", [head.feature, kernel], [CAM], kernel_shape=[1, 1])
        new.append(conv)
    else:
        # Flatten order is (c, y, x): W_k viewed as (C, h, w). h·w (a power of two here, exact)
        # makes the mean over positions equal the sum the linear layer computes.
        shape = _const(g, "cam_kernel_shape", np.array([k, c, h, w], np.int64))
        flat_kernel = _fresh(g, "cam_kernel_flat")
        area = _const(g, "cam_area", np.array(h * w, np.float32))
        new.append(helper.make_node("Reshape", [weight, shape], [flat_kernel]))
        new.append(helper.make_node("Mul", [flat_kernel, area], [kernel]))
        eq = "nchw,kchw->nkhw"
        new.append(helper.make_node("Einsum", [head.feature, kernel], [CAM], equation=eq))
    mean = _fresh(g, "cam_mean") if head.bias else LOGITS
    axes = _const(g, "cam_axes", np.array([2, 3], np.int64))  # an input since opset 18
    new.append(helper.make_node("ReduceMean", [CAM, axes], [mean], keepdims=0))
    if head.bias:
        new.append(helper.make_node("Add", [mean, head.bias], [LOGITS]))
    return new


def add_cam(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with outputs (logits, probabilities, cam (N, K, h, w)), where
    cam = W·F per position and logits = ReduceMean(cam, [2, 3]) + b (see the module docstring)."""
    if CAM in [o.name for o in model.graph.output]:
        raise GraphError(f"the model already has a {CAM!r} output")
    if _opset(model) < 18:
        raise GraphError(f"opset {_opset(model)}: ReduceMean with axes as an input needs >= 18")
    head = find_head(model)
    model = _copy(model)
    g = model.graph
    new = _cam_nodes(g, head)
    before = _tensor_names(g)
    nodes = list(g.node)
    at = next(i for i, n in enumerate(nodes) if LOGITS in n.output)
    nodes[at : at + 1] = new  # everything the new nodes read is produced before the old head
    del g.node[:]
    g.node.extend(nodes)
    dims = [None, head.classes, head.height, head.width]
    g.output.append(helper.make_tensor_value_info(CAM, TensorProto.FLOAT, dims))
    g.output[-1].type.tensor_type.shape.dim[0].CopyFrom(_batch_dim(model))
    _prune(g)
    # Stale: whatever the rewrite removed, and the tensors it now computes differently.
    _drop_value_info(g, (before - _tensor_names(g)) | {o for n in new for o in n.output})
    kind = "pooled" if head.pooled else "flat"
    map_size = [head.height, head.width]
    return _finish(model, {"transform": "cam", "head": kind, "map": map_size, "found": head.found})


def _value(graph, name: str) -> np.ndarray | None:
    """A constant tensor's value, also where it is stored fp16 behind a Cast."""
    value = _constant(graph, name)
    node = _producers(graph).get(name)
    if value is None and node is not None and node.op_type == "Cast":
        value = _constant(graph, node.input[0])
    return None if value is None else value.astype(np.float64)


def head_bias(model: onnx.ModelProto) -> np.ndarray:
    """The classifier's bias b, so that mean(cam) + b = logits: from the Add that makes the
    logits in a model with a cam output, or from the linear layer of one without."""
    g = model.graph
    if CAM in [o.name for o in g.output]:
        name = _cam_bias(g)
        if name is None:  # a head without a bias
            return np.zeros(_shapes(model)[CAM][1])
    else:
        head = find_head(model)
        if head.bias is None:
            return np.zeros(head.classes)
        name = head.bias
    return _value(g, name).reshape(-1)


def _cam_bias(g) -> str | None:
    """The bias input of the Add that makes the logits of a model with a cam output (add_cam
    writes logits = ReduceMean(cam) + b), or None for a head without a bias."""
    node = _producers(g)[LOGITS]
    if node.op_type != "Add":
        return None
    return next(i for i in node.input if _value(g, i) is not None)


# --- calibration ---------------------------------------------------------------------------------


def _ancestors(graph, name: str) -> list[onnx.NodeProto]:
    """The nodes `name` is computed from, nearest first."""
    prod, seen, out, todo = _producers(graph), set(), [], [name]
    while todo:
        node = prod.get(todo.pop(0))
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        todo.extend(node.input)
    return out


def _initializer_behind(graph, name: str, what: str) -> onnx.TensorProto:
    """The initializer `name` is, or is a Cast of (fp16 storage), used by nothing else."""
    inits = {i.name: i for i in graph.initializer}
    node = _producers(graph).get(name)
    if name not in inits and node is not None and node.op_type == "Cast":
        name = node.input[0]
    if name not in inits:
        raise GraphError(f"the head's {what} {name!r} is not an initializer")
    if len(_consumers(graph, name)) != 1:
        raise GraphError(f"the head's {what} {name!r} is shared: scaling it would change more")
    return inits[name]


def _head_tensors(g) -> tuple[onnx.TensorProto, onnx.TensorProto | None]:
    """(the cam kernel's weight, the bias) initializers of a model with a cam output."""
    head = next((n for n in _ancestors(g, CAM) if n.op_type in ("Conv", "Einsum")), None)
    if head is None:
        raise GraphError(f"no Conv or Einsum computes {CAM!r}")
    inits = {i.name: i for i in g.initializer}
    behind = [i for n in _ancestors(g, head.input[1]) for i in n.input if i in inits]
    weights = [i for i in dict.fromkeys(behind) if len(inits[i].dims) >= 2]  # not shapes, scales
    if not weights and head.input[1] in inits:
        weights = [head.input[1]]
    if len(weights) != 1:
        raise GraphError(f"the cam kernel comes from {len(weights)} weight tensors, not one")
    weight = _initializer_behind(g, weights[0], "weight")
    bias = _cam_bias(g)
    return weight, None if bias is None else _initializer_behind(g, bias, "bias")


def scale_logits(model: onnx.ModelProto, factor: float, record: dict) -> onnx.ModelProto:
    """A copy of a model with a cam output whose head weight and bias are multiplied by
    `factor` (1/T for a temperature T): the maps, the logits (mean(cam) + b) and the
    probabilities follow with no new node, in every precision the weights are stored in, and the
    invariant holds exactly. `record` goes into the graph_transforms metadata."""
    if CAM not in [o.name for o in model.graph.output]:
        raise GraphError(f"the model has no {CAM!r} output: run add_cam first")
    if not (np.isfinite(factor) and factor > 0):
        raise GraphError(f"the logits can only be scaled by a positive number, got {factor}")
    model = _copy(model)
    g = model.graph
    for init in filter(None, _head_tensors(g)):
        value = numpy_helper.to_array(init)
        scaled = (value.astype(np.float64) * factor).astype(value.dtype)
        init.CopyFrom(numpy_helper.from_array(scaled, init.name))
    return _finish(model, {"transform": "scale_logits", "factor": factor, **record})


# --- test-time augmentation ----------------------------------------------------------------------


def normalised_input(model: onnx.ModelProto) -> str:
    """The tensor where the in-graph preprocessing ends: follow the uint8 input through its
    single-consumer chain of Transpose/Cast/Mul/Add/Sub/Div (Transpose → Cast → Mul → Add here)."""
    g = model.graph
    name, seen = g.input[0].name, []
    while True:
        users = _consumers(g, name)
        if len(users) != 1 or users[0].op_type not in NORMALISATION_OPS:
            break
        seen.append(users[0].op_type)
        name = users[0].output[0]
    if "Cast" not in seen:
        found = [u.op_type for u in _consumers(g, name)]
        raise GraphError(
            f"no Transpose/Cast/Mul/Add preprocessing after the input: it goes "
            f"{' -> '.join(seen) or '(nothing)'} then to {found}"
        )
    return name


def _body_nodes(g, start: str, end: str) -> list[onnx.NodeProto]:
    """The nodes that read tensor `start`, directly or not, up to the producer of `end`."""
    reach = {start}
    on_path = []
    for node in g.node:
        if any(i in reach for i in node.input):
            reach.update(node.output)
            on_path.append(node)
        if end in node.output:
            break
    return on_path


def _mirror(g, x: str, out: str) -> onnx.NodeProto:
    """Reverse the last (width) axis: Slice with step −1."""
    starts = _const(g, "tta_flip_starts", np.array([-1], np.int64))
    ends = _const(g, "tta_flip_ends", np.array([INT64_MIN], np.int64))
    axes = _const(g, "tta_flip_axes", np.array([3], np.int64))
    steps = _const(g, "tta_flip_steps", np.array([-1], np.int64))
    return helper.make_node("Slice", [x, starts, ends, axes, steps], [out])


def _check_resizable(g, x: str, image_size: int, size: int) -> None:
    """Refuse a new size where an op between the image and the cam may pin the spatial size."""
    pinned = [
        f"{n.op_type} {n.name or n.output[0]}"
        for n in _body_nodes(g, x, CAM)
        if n.op_type in SHAPE_PINNING_OPS
    ]
    if size != image_size and pinned:
        raise GraphError(
            f"size {size} != {image_size}, but the network may depend on its input size "
            f"through {pinned} (a flat head reads fixed maps); use size={image_size}"
        )


def _front(g, x: str, *, flip: bool, size: int | None, resize: str) -> tuple[list, str]:
    """x → [x, mirror(x)] → resized to size×size (None: not resized). Mirroring before resizing
    makes the pair of a mirrored image the same two tensors swapped, so its logits equal the
    original's up to the summation order of the mean, not only up to resize rounding."""
    nodes, cur = [], x
    if flip:
        mirror, both = _fresh(g, "tta_mirror"), _fresh(g, "tta_pair")
        nodes.append(_mirror(g, cur, mirror))
        nodes.append(helper.make_node("Concat", [cur, mirror], [both], axis=0))
        cur = both
    if size is not None:
        sizes = _const(g, "tta_sizes", np.array([size, size], np.int64))
        out = _fresh(g, "tta_resized")
        resize_node = helper.make_node(
            "Resize",
            [cur, "", "", sizes],
            [out],
            axes=[2, 3],
            mode=resize,
            coordinate_transformation_mode="half_pixel",
        )
        nodes.append(resize_node)
        cur = out
    return nodes, cur


def _average_mirrored_cam(g) -> None:
    """cam of the pair → (first half + second half mirrored back) / 2 → `cam`, so the logits and
    probabilities downstream follow with no other change."""
    pair, a, b = _fresh(g, "tta_cam_pair"), _fresh(g, "tta_cam_a"), _fresh(g, "tta_cam_b")
    b_back, total = _fresh(g, "tta_cam_b_back"), _fresh(g, "tta_cam_sum")
    half = _const(g, "tta_half", np.array(0.5, np.float32))
    _producers(g)[CAM].output[0] = pair
    back = [
        helper.make_node("Split", [pair], [a, b], axis=0, num_outputs=2),
        _mirror(g, b, b_back),
        helper.make_node("Add", [a, b_back], [total]),
        helper.make_node("Mul", [total, half], [CAM]),
    ]
    _insert_after(g, pair, back)


def add_tta(model: onnx.ModelProto, *, flip: bool, size: int, resize: str = "linear"):
    """A copy of a model with a cam output (see `add_cam`) that upsamples the normalised image to
    size×size (`resize`: "linear" or "cubic", half-pixel centres as PyTorch's align_corners=False,
    cubic a=−0.75) and, with `flip`, averages the image's cam with its mirror image's cam flipped
    back (one network call on the doubled batch). Input and outputs keep their names and types;
    the cam becomes (N, K, h', w') for the new size. flip=False at the input's own size is an
    unchanged copy. A flat head (the spec nets) reads maps of fixed size: only flip works there."""
    if resize not in ("linear", "cubic"):
        raise GraphError(f"resize must be 'linear' or 'cubic', got {resize!r}")
    if CAM not in [o.name for o in model.graph.output]:
        raise GraphError(f"the model has no {CAM!r} output: run add_cam first")
    model = _copy(model)
    g = model.graph
    image_size = g.input[0].type.tensor_type.shape.dim[1].dim_value  # NHWC
    x = normalised_input(model)
    _check_resizable(g, x, image_size, size)
    if size == image_size and not flip:
        return model
    front, cur = _front(g, x, flip=flip, size=None if size == image_size else size, resize=resize)
    for node in g.node:  # the body now reads `cur` instead of `x`
        for i, name in enumerate(node.input):
            if name == x:
                node.input[i] = cur
    _insert_after(g, x, front)
    if flip:
        _average_mirrored_cam(g)
    # Every intermediate shape changed (spatial size, batch 2N): infer them all afresh.
    del g.value_info[:]
    cam_out = next(o for o in g.output if o.name == CAM)
    for d in cam_out.type.tensor_type.shape.dim[2:]:
        d.Clear()  # shape inference fills in the new h', w'
    model = _finish(model, {"transform": "tta", "flip": flip, "size": size, "resize": resize})
    spatial = _shapes(model).get(CAM, [])[2:]
    if len(spatial) != 2 or not all(isinstance(v, int) and v > 0 for v in spatial):
        raise GraphError(f"cam spatial size not inferable after TTA: {spatial}")
    return model


# --- cost ----------------------------------------------------------------------------------------


def gflops(model: onnx.ModelProto, batch: int = 1) -> float:
    """GFLOPs per image of the Conv/Gemm/MatMul/Einsum nodes (2 per multiply-add; elementwise ops,
    pooling and resizing left out: under 1% here), from shapes inferred at a fixed batch."""
    m = _copy(model)
    m.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    for o in m.graph.output:  # unknown sizes (rank kept): inference fills in this batch's
        for d in o.type.tensor_type.shape.dim:
            d.Clear()
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    shapes = _shapes(m)
    total = 0
    for n in m.graph.node:
        out = shapes.get(n.output[0])
        if n.op_type == "Conv":
            wshape = shapes[n.input[1]]  # (Cout, Cin/groups, kh, kw)
            total += 2 * np.prod(out) * np.prod(wshape[1:])
        elif n.op_type in ("Gemm", "MatMul"):
            a = shapes[n.input[0]]
            total += 2 * np.prod(out) * a[-1]
        elif n.op_type == "Einsum":
            total += 2 * np.prod(out) * shapes[n.input[0]][1]  # the c contraction
    return float(total) / batch / 1e9

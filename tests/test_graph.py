"""The graph rewrites of export/graph.py (activation maps, test-time augmentation) on tiny
networks exported the project's way, before the maps are added; no real data."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from export import graph as G
from export import onnx_export as E
from export.fold import fold_model
from training.models import build_model

RESNET = dict(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), num_classes=5)  # maps 2x2 at 64 px
SPEC = dict(spec="conv8 avg2 bb8 bb16 avg2 avg2 avg2 fc", num_classes=5)  # flat head, 4x4 maps


@pytest.fixture(scope="module")
def nets():
    """name → (ModelProto, torch net, (mean, std)); fp16 = weights stored fp16 behind Casts."""
    return {
        "resnet": export_tiny_with_model("resnet18", **RESNET),
        "resnet-fp16": export_tiny_with_model("resnet18", weights="fp16", **RESNET),
        "resnet-e": export_tiny_with_model("resnet18", variant="e", **RESNET),
        "spec": export_tiny_with_model("ebrahimi-net1", **SPEC),
        "spec-fp16": export_tiny_with_model("ebrahimi-net1", weights="fp16", **SPEC),
    }


MEAN, STD = (120.0, 110.0, 100.0), (60.0, 58.0, 59.0)


def randomize_bn(model, seed: int = 0):
    """Non-trivial BN statistics and affines, so that folding and the head carry real values."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def export_tiny_with_model(name: str, *, weights: str = "fp32", seed: int = 0, **overrides):
    """(the ModelProto torch's exporter writes, before the maps; the eval-mode torch network;
    (mean, std)) for `build_model(name, **overrides)`."""
    torch.manual_seed(seed)
    model = randomize_bn(build_model(name, **overrides), seed).eval()
    with torch.no_grad():  # a bias on the linear layer that is not ~0, so b matters
        model.head[-1].bias.normal_(0, 0.5)
    proto = E.to_onnx(E.ImageClassifier(fold_model(model), MEAN, STD))
    if weights == "fp16":
        # store_fp16 stores only initializers of >= 1024 elements by default: a tiny head
        # (5 x 64) would stay fp32, so lower the threshold to exercise the Cast path.
        proto = E.store_fp16(proto, min_size=64)
    return proto, model, (MEAN, STD)


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"image": x}), strict=True))


def bias_of(model):
    """The head bias, read from the original graph (through a Cast where it is stored fp16)."""
    name = G.find_head(model).bias
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    if name not in inits:
        name = next(
            n.input[0] for n in model.graph.node if n.op_type == "Cast" and name in n.output
        )
    return inits[name].astype(np.float64)


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# --- add_cam -------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["resnet", "resnet-fp16", "resnet-e", "spec", "spec-fp16"])
def test_cam_invariant_holds_and_logits_do_not_move(nets, which):
    model = nets[which][0]
    cam_model = G.add_cam(model)
    assert [o.name for o in cam_model.graph.output] == ["logits", "probabilities", "cam"]
    x = images(7)
    old, new = run(model, x), run(cam_model, x)
    h = 2 if which.startswith("resnet") else 4
    assert new["cam"].shape == (7, 5, h, h)
    assert new["cam"].dtype == np.float32
    mean_plus_b = new["cam"].astype(np.float64).mean((2, 3)) + bias_of(model)
    np.testing.assert_allclose(mean_plus_b, new["logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(new["logits"], old["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(new["probabilities"], softmax(new["logits"]), atol=1e-6)


def test_cam_keeps_dynamic_batch_and_drops_stale_value_info(nets):
    model = G.add_cam(nets["resnet"][0])
    batch = G._batch_dim(model).dim_param
    assert batch
    assert {o.name: dims(o) for o in model.graph.output} == {
        "logits": [batch, 5],
        "probabilities": [batch, 5],
        "cam": [batch, 5, 2, 2],
    }
    produced = {o for n in model.graph.node for o in n.output}
    produced |= {i.name for i in model.graph.initializer}
    assert {vi.name for vi in model.graph.value_info} <= produced
    assert not [
        n for n in model.graph.node if n.op_type in ("Gemm", "Reshape") and "cam" not in n.output[0]
    ]
    for n in (1, 4):
        assert run(model, images(n))["cam"].shape == (n, 5, 2, 2)


def test_cam_keeps_fp16_weight_storage(nets):
    model = G.add_cam(nets["resnet-fp16"][0])
    head_w = G.find_head(nets["resnet-fp16"][0]).weight
    (cast,) = [n for n in model.graph.node if head_w in n.output]
    assert cast.op_type == "Cast"
    inits = {i.name: i for i in model.graph.initializer}
    assert inits[cast.input[0]].data_type == onnx.TensorProto.FLOAT16
    fp32_big = [
        i.name
        for i in model.graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) >= 64
    ]
    assert fp32_big == []


def _with_head(model, rewrite):
    """A copy of `model` whose Gemm head is rewritten by `rewrite(graph, gemm)`."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    (gemm,) = [n for n in m.graph.node if n.op_type == "Gemm"]
    rewrite(m.graph, gemm)
    del m.graph.value_info[:]
    onnx.checker.check_model(m)
    return m


def _matmul_add(graph, gemm):
    """Gemm(x, W, b, transB=1) → Add(MatMul(x, W^T), b), W^T a new (C, K) initializer."""
    inits = {i.name: i for i in graph.initializer}
    w = numpy_helper.to_array(inits[gemm.input[1]])
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), "w_ck"))
    nodes = [
        helper.make_node("MatMul", [gemm.input[0], "w_ck"], ["mm"]),
        helper.make_node("Add", [gemm.input[2], "mm"], ["logits"]),
    ]
    _replace(graph, gemm, nodes)


def _gap_flatten(graph, gemm):
    """ReduceMean → Reshape becomes GlobalAveragePool → Flatten."""
    prod = G._producers(graph)
    reshape = prod[gemm.input[0]]
    mean = prod[reshape.input[0]]
    nodes = [
        helper.make_node("GlobalAveragePool", [mean.input[0]], ["gap"]),
        helper.make_node("Flatten", ["gap"], [reshape.output[0]], axis=1),
    ]
    _replace(graph, mean, nodes[:1])
    _replace(graph, G._producers(graph)[gemm.input[0]], nodes[1:])


def _replace(graph, old, new):
    nodes = list(graph.node)
    at = next(i for i, n in enumerate(nodes) if list(n.output) == list(old.output))
    nodes[at : at + 1] = new
    del graph.node[:]
    graph.node.extend(nodes)


@pytest.mark.parametrize("rewrite", [_matmul_add, _gap_flatten])
def test_other_head_spellings(nets, rewrite):
    model = _with_head(nets["resnet"][0], rewrite)
    x = images(3)
    new = run(G.add_cam(model), x)
    np.testing.assert_allclose(new["logits"], run(nets["resnet"][0], x)["logits"], atol=1e-4)
    np.testing.assert_allclose(
        new["cam"].mean((2, 3)) + bias_of(nets["resnet"][0]), new["logits"], atol=1e-5
    )


def test_unknown_head_is_named(nets):
    def relu_after(graph, gemm):  # logits = Relu(Gemm(...)): not a linear head
        gemm.output[0] = "pre"
        _replace(graph, gemm, [gemm, helper.make_node("Relu", ["pre"], ["logits"])])

    model = _with_head(nets["resnet"][0], relu_after)
    with pytest.raises(G.GraphError, match="found logits <- Relu"):
        G.add_cam(model)
    with pytest.raises(G.GraphError, match="already has a 'cam' output"):
        G.add_cam(G.add_cam(nets["resnet"][0]))


# --- add_tta -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cams(nets):
    return {k: G.add_cam(v[0]) for k, v in nets.items()}


@pytest.mark.parametrize(("size", "resize"), [(64, "linear"), (96, "linear"), (80, "cubic")])
def test_tta_flip_is_mirror_symmetric(cams, size, resize):
    model = G.add_tta(cams["resnet"], flip=True, size=size, resize=resize)
    x = images(5)
    a, b = run(model, x), run(model, np.ascontiguousarray(x[:, :, ::-1]))
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(a["cam"], b["cam"][..., ::-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize(("size", "cam_size"), [(64, 2), (96, 3), (128, 4)])
def test_tta_shapes_invariant_dynamic_batch(nets, cams, flip, size, cam_size):
    model = G.add_tta(cams["resnet"], flip=flip, size=size)
    (inp,) = model.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims(inp)[1:] == [64, 64, 3]
    assert isinstance(dims(inp)[0], str)
    assert dims(model.graph.output[2])[1:] == [5, cam_size, cam_size]
    for n in (1, 3):
        out = run(model, images(n, seed=n))
        assert out["logits"].shape == (n, 5)
        assert out["cam"].shape == (n, 5, cam_size, cam_size)
        mean_plus_b = out["cam"].astype(np.float64).mean((2, 3)) + bias_of(nets["resnet"][0])
        np.testing.assert_allclose(mean_plus_b, out["logits"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(out["probabilities"], softmax(out["logits"]), atol=1e-6)


@pytest.mark.parametrize("size", [64, 72])
def test_tta_flip_is_the_mean_of_image_and_mirror(cams, size):
    """What the sweep relies on: flip TTA = mean of the no-flip model on x and on mirror(x)."""
    x = images(4)
    plain = G.add_tta(cams["resnet"], flip=False, size=size)
    both = run(G.add_tta(cams["resnet"], flip=True, size=size), x)["logits"]
    mirror = np.ascontiguousarray(x[:, :, ::-1])
    mean = (run(plain, x)["logits"] + run(plain, mirror)["logits"]) / 2
    np.testing.assert_allclose(both, mean, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("resize", "mode"), [("linear", "bilinear"), ("cubic", "bicubic")])
def test_tta_resize_matches_torch_interpolate(nets, cams, resize, mode):
    _, net, (mean, std) = nets["resnet"]
    x = images(3)
    got = run(G.add_tta(cams["resnet"], flip=False, size=96, resize=resize), x)["logits"]
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    t = (t - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = net(F.interpolate(t, size=(96, 96), mode=mode, align_corners=False)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_tta_size_64_without_flip_changes_nothing(cams):
    x = images(3)
    same = G.add_tta(cams["resnet"], flip=False, size=64)
    np.testing.assert_array_equal(run(same, x)["logits"], run(cams["resnet"], x)["logits"])


def test_tta_on_a_flat_head(nets, cams):
    with pytest.raises(G.GraphError, match="Einsum"):
        G.add_tta(cams["spec"], flip=False, size=72)
    model = G.add_tta(cams["spec"], flip=True, size=64)  # flipping needs no new size
    x = images(3)
    a, b = run(model, x), run(model, np.ascontiguousarray(x[:, :, ::-1]))
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        a["cam"].astype(np.float64).mean((2, 3)) + bias_of(nets["spec"][0]), a["logits"], atol=1e-5
    )


def test_tta_errors(nets, cams):
    with pytest.raises(G.GraphError, match="run add_cam first"):
        G.add_tta(nets["resnet"][0], flip=True, size=64)
    with pytest.raises(G.GraphError, match="'linear' or 'cubic'"):
        G.add_tta(cams["resnet"], flip=True, size=72, resize="nearest")


def test_tta_metadata_records_the_transforms(cams):
    model = G.add_tta(cams["resnet"], flip=True, size=72, resize="cubic")
    props = {p.key: p.value for p in model.metadata_props}
    done = json.loads(props[G.TRANSFORMS_KEY])
    assert [d["transform"] for d in done] == ["cam", "tta"]
    assert done[1] == {"transform": "tta", "flip": True, "size": 72, "resize": "cubic"}


def test_head_bias_is_read_before_and_after_the_maps(nets):
    for which in ("resnet", "resnet-fp16", "spec"):
        model, net, _ = nets[which]
        expected = net.head[-1].bias.detach().double().numpy()
        tol = 1e-3 if which.endswith("fp16") else 0
        np.testing.assert_allclose(G.head_bias(model), expected, atol=tol)
        np.testing.assert_allclose(G.head_bias(G.add_cam(model)), expected, atol=tol)


def test_every_node_is_named_for_the_quantizer(cams):
    for model in (cams["resnet"], G.add_tta(cams["resnet"], flip=True, size=64)):
        names = [n.name for n in model.graph.node]
        assert all(names)
        assert len(set(names)) == len(names)


def test_gflops_scale_with_size_and_flip(cams):
    base = G.gflops(cams["resnet"])
    tta = G.gflops(G.add_tta(cams["resnet"], flip=True, size=128))
    assert tta == pytest.approx(base * 4 * 2, rel=1e-6)  # every map exactly 2x wider and taller


# --- scale_logits (calibration) --------------------------------------------------------------


def with_flip(cams):
    return G.add_tta(cams["resnet"], flip=True, size=64)


@pytest.mark.parametrize("which", ["resnet", "resnet-fp16", "spec", "spec-fp16", "resnet-flip"])
def test_a_temperature_folded_into_the_head_scales_logits_and_maps_only(cams, which):
    model = with_flip(cams) if which == "resnet-flip" else cams[which]
    t = 0.69  # the shipped model's temperature is about this
    scaled = G.scale_logits(model, 1 / t, {"temperature": t})
    assert len(scaled.graph.node) == len(model.graph.node)  # no new node: serving is unchanged
    x = images(9, seed=3)
    old, new = run(model, x), run(scaled, x)
    atol = 2e-2 if "fp16" in which else 1e-4  # fp16 storage rounds the scaled weights again
    np.testing.assert_allclose(new["logits"] * t, old["logits"], atol=atol, rtol=0)
    np.testing.assert_allclose(new["cam"] * t, old["cam"], atol=atol, rtol=0)
    assert (new["logits"].argmax(1) == old["logits"].argmax(1)).all()
    mean_plus_b = new["cam"].astype(np.float64).mean((2, 3)) + G.head_bias(scaled)
    np.testing.assert_allclose(mean_plus_b, new["logits"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(new["probabilities"], softmax(new["logits"]), atol=1e-6)
    assert new["probabilities"].max(1).mean() > old["probabilities"].max(1).mean()  # T < 1
    props = {p.key: p.value for p in scaled.metadata_props}
    assert json.loads(props[G.TRANSFORMS_KEY])[-1] == {
        "transform": "scale_logits",
        "factor": 1 / t,
        "temperature": t,
    }


def test_scale_logits_refuses_what_it_cannot_do(nets, cams):
    with pytest.raises(G.GraphError, match="no 'cam' output: run add_cam first"):
        G.scale_logits(nets["resnet"][0], 2.0, {})
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(G.GraphError, match="positive number"):
            G.scale_logits(cams["resnet"], bad, {})

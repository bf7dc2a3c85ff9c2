"""Export: folding per unit variant, the ONNX graph and its metadata, parity with PyTorch, INT8,
errors, and everything around TensorRT that runs without it."""

import dataclasses
import json
from dataclasses import asdict

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export import graph as G
from export import onnx_export as E
from export import quantize as Q
from export import tensorrt as T
from export.__main__ import main
from export.fold import (
    ChannelAffine,
    FoldError,
    count_modules,
    fold_bn_into_conv,
    fold_model,
    fold_survival,
)
from export.pipeline import export
from inference import contract as C
from inference.backend import read_card
from inference.contract import random_images
from training import presets as P
from training import train as TR
from training.checkpoint import (
    CheckpointError,
    file_sha256,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from training.config import ConfigError
from training.data import load
from training.models import Chain, build_model

LOOSE = (100.0, 0.5)  # INT8 bar for a barely trained model: points it may lose, agreement
SMALL = {"layers": (1, 1, 1, 1), "widths": (8, 16, 32, 64), "num_classes": 10}


def randomize_bn(model, seed=0):
    """Non-trivial test-time statistics, so that every fold changes the weights."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data = torch.randn(c, generator=g) * 0.5 + 1
            m.bias.data = torch.randn(c, generator=g) * 0.2
    return model


def rel_error(a, b):
    return ((a - b).norm() / b.norm()).item()


# --- folding -------------------------------------------------------------------------------------

FOLD_CASES = {
    # He et al. 2016 Fig. 4 units (a)-(e), stochastic depth on (p_L = 0.5)
    **{f"unit-{v}": ("resnet18", {**SMALL, "variant": v, "survival_last": 0.5}) for v in "abcde"},
    "unit-e-avgpool-pad": ("resnet18", {**SMALL, "variant": "e", "survival_last": 0.5,
                                        "shortcut": "avgpool-pad"}),
    "unit-b-avgpool-pad": ("resnet18", {**SMALL, "variant": "b", "survival_last": 0.5,
                                        "shortcut": "avgpool-pad"}),
    # Ebrahimi & Abadi: dropout inside each basic block and before the classifier
    "dropout-block": ("ebrahimi-net4", {"num_classes": 10, "survival_last": 0.5}),
    "plain-twin": ("plain18", SMALL),
    "cifar-stem": ("resnet18-cifar", {**SMALL, "survival_last": 0.8}),
}  # fmt: skip


@pytest.mark.parametrize("case", FOLD_CASES)
def test_folded_model_equals_eval_model(case):
    name, overrides = FOLD_CASES[case]
    torch.manual_seed(0)
    model = randomize_bn(build_model(name, **overrides)).train()  # mode must not matter
    before = count_modules(model)
    folded = fold_model(model)
    assert model.training
    assert count_modules(model) == before
    after = count_modules(folded)
    assert after["batchnorm"] == after["dropout"] == after["scaled_blocks"] == 0
    assert not folded.training
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert rel_error(folded(x), model.eval()(x)) <= 1e-5


def test_pre_activation_bn_becomes_affine_and_unit_b_projection_folds_away():
    e = fold_model(randomize_bn(build_model("resnet18", **SMALL, variant="e")))
    # four blocks' leading pre-activation BN and the final BN before pooling (He et al. §4.1)
    assert count_modules(e)["affine"] == 5
    b = fold_model(randomize_bn(build_model("resnet18", **SMALL, variant="b")))
    # post-add BN: folds into both addends where the shortcut is a projection (stages 2-4)
    assert count_modules(b)["affine"] == 1


def test_bn_folds_into_conv_and_survival_passes_through_relu():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), randomize_bn(nn.BatchNorm2d(4)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert rel_error(fold_bn_into_conv(conv, bn)(x), bn(conv(x))) < 1e-6
        branch = Chain(conv, nn.ReLU())
        assert rel_error(fold_survival(branch, 0.3)(x), 0.3 * branch(x)) < 1e-6


def test_unfoldable_modules_are_named():
    with pytest.raises(FoldError, match=r"cannot fold p=0\.5"):
        fold_survival(Chain(nn.Conv2d(3, 3, 1), ChannelAffine(torch.ones(3), torch.ones(3))), 0.5)
    with pytest.raises(FoldError, match="no folding rule for GELU"):
        fold_model(nn.Sequential(nn.GELU()))


# --- the exported fixture model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_zip, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse private cache is not on
        mp.setenv("TINY_IMAGENET_CACHE", str(out / "cache"))
        TR.train(P.get("smoke"), tiny_zip, out, preset="smoke", progress=False)
    return out / "last.pt"


@pytest.fixture(scope="module")
def exported(tiny_ckpt, tiny_zip, tmp_path_factory):
    """`export(..., int8=True)` once: fp32 and int8 models and the report. The smoke run's model
    (2 epochs, 16 val images: one flip is 6%) is held to a loose INT8 bar here; the real bar's
    refusal is tested on its own."""
    out = tmp_path_factory.mktemp("models") / "tiny.onnx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINY_IMAGENET_CACHE", str(out.parent / "cache"))
        report = export(tiny_ckpt, out, data=tiny_zip, int8=True, calib_images=48, bench=False,
                        count_unfolded=False, int8_bar=LOOSE)  # fmt: skip
    return out, report


def test_graph_structure(exported):
    path, _ = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = E.op_counts(model)
    assert not {"BatchNormalization", "Dropout"} & set(ops)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == C.INPUT_NAME
    assert isinstance(dims[0], str)
    assert dims[1:] == [64, 64, 3]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in model.graph.output] == list(C.OUTPUTS)


def test_metadata_round_trip(exported, tiny_ckpt):
    path, report = exported
    card = read_card(path)
    ckpt = load_checkpoint(tiny_ckpt)
    assert card.wnids == tuple(ckpt["classes"]["wnids"])
    assert card.names[0] == "goldfish"
    assert card.mean == tuple(ckpt["preprocessing"]["mean"])
    assert card.checkpoint_sha256 == file_sha256(tiny_ckpt)
    assert card.preset == "smoke"
    assert card.precision == "fp32"
    assert card.model_config == ckpt["config"]["model"]
    assert card.val_images == 16
    assert card.val_top1 == report["fp32"]["val_top1"]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert set(C.METADATA_KEYS) <= set(meta)
    assert C.ModelCard.from_metadata(meta) == card
    assert json.loads(meta["input"])["dtype"] == "uint8"


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnx_matches_pytorch(exported, tiny_ckpt, batch):
    path, _ = exported
    model, ckpt = load_model(tiny_ckpt)
    x = random_images(batch, seed=batch)
    ref = E.run_torch(model, x, ckpt["preprocessing"]["mean"], ckpt["preprocessing"]["std"])
    logits, probs, cam = E.session(path).run(None, {C.INPUT_NAME: x})
    assert logits.shape == (batch, 4)
    assert cam.shape[:2] == (batch, 4)
    bias = model.head[-1].bias.detach().numpy()
    assert E.cam_error(logits, cam, bias) <= 1e-5
    assert np.abs(logits - ref).max() <= E.LOGIT_ATOL
    assert (logits.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(ref), 1).numpy(), atol=1e-5)


def test_int8_forms_keep_top1_and_the_maps(exported, tiny_zip):
    path, report = exported
    q, ir = C.int8_paths(path)
    assert report["int8"]["onnxruntime"]["path"] == str(q)
    assert report["int8"]["openvino"]["path"] == str(ir)
    assert ir.with_suffix(".bin").is_file()
    for form in (q, ir):
        card = read_card(form)
        assert card.precision == "int8"
        assert card.val_images == 16
        assert card.cam_size == read_card(path).cam_size
        assert card.parity["reference"] == "fp32"
        assert card.parity["cam_invariant_max_error"] <= E.CAM_ATOL
    assert "QuantizeLinear" in E.op_counts(onnx.load(str(q)))
    ds = load(tiny_zip)
    x = np.concatenate([ds.train.x, ds.val.x])
    fp32 = E.run_onnx(E.session(path), x)
    int8, cam = E.run_outputs(E.session(q), x, [C.OUTPUT_LOGITS, C.OUTPUT_CAM])
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.9
    bias = G.head_bias(onnx.load(str(path)))
    assert E.cam_error(int8, cam, bias) <= E.CAM_ATOL
    ov_logits, ov_cam = Q.run_openvino(str(ir), x, (C.OUTPUT_LOGITS, C.OUTPUT_CAM))
    assert (fp32.argmax(1) == ov_logits.argmax(1)).mean() >= 0.9
    assert E.cam_error(ov_logits, ov_cam, bias) <= E.CAM_ATOL
    saved = json.loads(path.with_name("tiny.export.json").read_text())
    assert saved["int8"]["onnxruntime"]["val_top1"] == read_card(q).val_top1


def test_an_int8_form_that_misses_the_bar_is_refused_with_the_figures(exported, tiny_zip):
    from export.pipeline import check_form

    path, _ = exported
    fp32 = E.Export(onnx.load(str(path)), read_card(path), None, {}, {}, np.zeros(4), 0.0,
                    np.eye(4)[[0, 1, 2, 3] * 4], None)  # fmt: skip
    fp32 = dataclasses.replace(fp32, card=dataclasses.replace(fp32.card, val_top1=1.0))
    labels = np.array([0, 1, 2, 3] * 4)
    flipped = np.eye(4)[[1, 1, 2, 3] * 4]  # 4 of 16 wrong: -25 points, 75% agreement
    cam = np.repeat(flipped[:, :, None, None], 2, 2).repeat(2, 3)
    with pytest.raises(E.ParityError, match=r"-25\.00 points.*agreement 75\.00%"):
        check_form("INT8", fp32, flipped, cam, labels)
    assert check_form("INT8", fp32, flipped, cam, labels, bar=LOOSE)["top1_agreement"] == 0.75


def test_throughput_runs(exported):
    path, _ = exported
    assert Q.throughput(path, batch_size=4, threads=1, seconds=0.1) > 0


# --- node counts: what folding removes -----------------------------------------------------------


def test_unfolded_graph_keeps_what_folding_removes():
    torch.manual_seed(0)
    cfg_model = build_model("resnet18", **SMALL, variant="e", survival_last=0.5)
    model = randomize_bn(cfg_model).eval()
    ckpt = {
        "preset": None,
        "config": {"model": asdict(model.config)},
        "classes": {"wnids": [f"n{i}" for i in range(10)], "names": [f"c{i}" for i in range(10)]},
        "preprocessing": {"mean": [120.0, 110.0, 100.0], "std": [60.0, 58.0, 59.0]},
    }
    result = E.export_fp32(model, ckpt, random_batches=(3,), count_unfolded=True)
    before, after = result.nodes_before, result.nodes_after
    assert before["BatchNormalization"] == 5  # the exporter itself fuses only conv→BN pairs
    assert "BatchNormalization" not in after
    # survival scaling: one Mul per block before; after, Muls are the normalisation and the five
    # pre-activation affines only
    assert before["Mul"] == 1 + 4
    assert after["Mul"] == 1 + 5
    assert result.parity["random batch 3"].max_abs_logit_diff <= E.LOGIT_ATOL


# --- errors --------------------------------------------------------------------------------------


def test_corrupt_checkpoint_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_model(bad)
    assert main(["--checkpoint", str(bad), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_checkpoint_whose_weights_do_not_fit(tiny_ckpt, tmp_path):
    ckpt = load_checkpoint(tiny_ckpt)
    ckpt["config"]["model"]["widths"] = [16, 32, 64, 128]
    save_checkpoint(tmp_path / "wrong.pt", {k: v for k, v in ckpt.items() if k != "format"})
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(tmp_path / "wrong.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a tiny-imagenet-resnet"):
        load_model(tmp_path / "foreign.pt")


def test_data_with_other_classes_is_refused(tiny_ckpt, tiny_zip):
    ckpt = load_checkpoint(tiny_ckpt)
    ckpt["classes"]["wnids"] = ckpt["classes"]["wnids"][::-1]  # trained on another class order
    with pytest.raises(E.ExportError, match="not the model's 4"):
        E.checkpoint_val(tiny_zip, ckpt)


def test_parity_failure_gives_figures():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    with pytest.raises(E.ParityError, match=r"max \|Δlogit\| 1\.00e-03.*top-1 agreement 100"):
        E.check_parity("test", ref, ref + 1e-3)
    with pytest.raises(E.ParityError, match="1 differ"):
        E.check_parity("test", ref, np.array([[0.0, 1.0], [0.0, 2.0]], np.float32))


def test_parity_tolerates_a_rare_near_tie_flip_only():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2000, 5)).astype(np.float32)
    ref[:, 0] += 10  # class 0 wins clearly everywhere...
    ref[:3, 1] = ref[:3, 0] - 1e-3  # ...except three near ties
    other = ref.copy()
    other[0, 1] += 2e-3  # one tie flipped in 2000 images (0.05%), every logit within atol
    parity = E.check_parity("tie", ref, other, atol=1e-2)
    assert (parity.top1_mismatches, parity.max_margin_overturned) == (
        1,
        pytest.approx(1e-3, rel=1e-2),
    )
    other[1:3, 1] += 2e-3  # three flips (0.15%): more than ties explain
    with pytest.raises(E.ParityError, match=r"3 differ.*at most 0\.1%"):
        E.check_parity("tie", ref, other, atol=1e-2)


def test_fp16_weights_halve_the_file_and_stay_within_tolerance(exported, tiny_ckpt, tiny_zip,
                                                               tmp_path, monkeypatch):  # fmt: skip
    monkeypatch.setenv("TINY_IMAGENET_CACHE", str(tmp_path / "cache"))
    fp32_path, _ = exported
    out = tmp_path / "half.onnx"
    report = export(tiny_ckpt, out, data=tiny_zip, weights="fp16", int8=True, calib_images=48,
                    bench=False, count_unfolded=False, int8_bar=LOOSE)  # fmt: skip
    assert out.stat().st_size < 0.6 * fp32_path.stat().st_size
    card = read_card(out)
    assert (card.weights, card.precision) == ("fp16", "fp32")
    model = onnx.load(str(out))
    big = [i.data_type for i in model.graph.initializer if np.prod(i.dims) >= 1024]
    assert big
    assert set(big) == {onnx.TensorProto.FLOAT16}  # small tensors stay fp32: nothing to gain
    x = random_images(64, seed=3)
    full, half = E.run_onnx(E.session(fp32_path), x), E.run_onnx(E.session(model), x)
    assert 0 < np.abs(full - half).max() <= E.WEIGHTS_ATOL["fp16"]
    assert report["fp32"]["parity"]["val"]["top1_mismatches"] == 0
    # The quantizer was given fp32 initializers again, and quantized them.
    restored = E.load_fp16(model)
    assert E.op_counts(restored)["Cast"] == E.op_counts(onnx.load(str(fp32_path)))["Cast"]
    np.testing.assert_allclose(E.run_onnx(E.session(restored), x), half, atol=1e-5)
    assert "QuantizeLinear" in E.op_counts(onnx.load(str(C.int8_paths(out)[0])))


def test_weights_beyond_fp16_range_are_refused(exported):
    from onnx import numpy_helper

    model = onnx.load(str(exported[0]))
    init = max(model.graph.initializer, key=lambda i: np.prod(i.dims))
    w = numpy_helper.to_array(init).copy()
    w.flat[0] = 1e6
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    with pytest.raises(E.ExportError, match=f"{init.name} exceeds fp16's range"):
        E.store_fp16(model)


# --- calibration ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def confident_val(exported, tiny_zip):
    """The exported fixture model as the export sees it, with val labelled by its own top-1: a
    model that is always right, whose best temperature is well under 1 on both halves."""
    from export.pipeline import from_onnx

    fp32, _, _ = from_onnx(exported[0], tiny_zip)
    return fp32, (fp32.val_inputs, fp32.val_logits.argmax(1))


def test_a_temperature_is_folded_into_the_head_and_checked(confident_val):
    from export.pipeline import with_calibration

    fp32, val = confident_val
    done = with_calibration(fp32, val, "temperature")
    record = done.card.calibration
    t = record["temperature"]
    assert t < 0.5
    assert record["after"]["nll"] < record["before"]["nll"]
    assert (record["fit_images"], record["judged_images"]) == (8, 8)
    np.testing.assert_allclose(done.val_logits * t, fp32.val_logits, atol=1e-4 * 10)
    assert (done.val_logits.argmax(1) == fp32.val_logits.argmax(1)).all()
    np.testing.assert_allclose(done.bias * t, fp32.bias, atol=1e-5)
    assert done.cam_error <= E.CAM_ATOL
    assert {"random batch 64, calibrated", "val, calibrated"} <= set(done.parity)
    assert C.ModelCard.of(done.model) == done.card  # the card travels in the file
    x = random_images(5, seed=1)
    logits, probs, cam = E.session(done.model).run(None, {C.INPUT_NAME: x})
    assert E.cam_error(logits, cam, G.head_bias(done.model)) <= E.CAM_ATOL
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-6)
    # Again on the calibrated model: fitted from its raw logits, so the same T, not T².
    again = with_calibration(done, val, "temperature")
    assert again.card.calibration["temperature"] == pytest.approx(t, rel=1e-3)
    np.testing.assert_allclose(again.val_logits, done.val_logits, rtol=1e-3, atol=1e-3)


def test_each_int8_card_judges_the_temperature_on_its_own_logits(confident_val):
    from export import calibration as K
    from export.pipeline import _int8_card, with_calibration

    fp32, (x, labels) = confident_val
    card = with_calibration(fp32, (x, labels), "temperature").card
    int8_logits = fp32.val_logits * 0.9  # any other logits of the same images
    parity = {"images": len(labels), "val_top1": 0.5, "val_top5": 1.0}
    got = _int8_card(card, parity, int8_logits, labels).calibration
    _, judge = K.halves(labels)
    assert got["after"] == K.figures(int8_logits[judge], labels[judge])
    assert got["before"] == card.calibration["before"]
    assert got["temperature"] == card.calibration["temperature"]


def test_a_calibration_that_does_not_help_is_left_out_by_default_and_fails_if_asked(
    exported, tmp_path, tiny_zip, capsys
):
    from export import calibration as K

    path, _ = exported
    out = tmp_path / "m.onnx"
    assert main(["--onnx", str(path), "--out", str(out), "--calibrate", "temperature"]) == 2
    assert "--calibrate temperature needs --data" in capsys.readouterr().err
    # What calibration.fit raises when a temperature does not lower NLL on the other half
    # (tests/test_calibration.py makes one happen).
    with pytest.MonkeyPatch.context() as mp:

        def against_the_model(logits, labels, method="temperature"):
            raise K.CalibrationError(
                "temperature 1.6 raises NLL on the val half it was not fitted on"
            )

        mp.setattr(K, "fit", against_the_model)
        report = export(path, out, data=tiny_zip, bench=False)
        assert report["calibration"]["refused"].startswith("temperature")
        assert read_card(out).calibration is None
        assert "exported without calibration" in capsys.readouterr().out
        status = main(["--onnx", str(path), "--out", str(out), "--data", str(tiny_zip),
                       "--calibrate", "temperature", "--no-bench"])  # fmt: skip
        assert status == 2
        assert "raises NLL on the val half it was not fitted on" in capsys.readouterr().err


def test_unusable_options_fail_before_any_work(tiny_ckpt, exported, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["--checkpoint", str(tiny_ckpt), "--out", str(out), "--int8"]) == 2
    assert "--int8 needs --data" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"unknown weights 'int4'; valid: fp32, fp16"):
        export(tiny_ckpt, out, weights="int4", bench=False)
    with pytest.raises(ConfigError, match=r"unknown preset 'turbo'; valid: mixed, performance"):
        Q.int8_onnx(onnx.load(str(exported[0])), np.zeros((1, 64, 64, 3), np.uint8), "turbo")
    assert not out.exists()


# --- TensorRT: all that runs without it ----------------------------------------------------------


def _tensorrt_importable():
    try:
        T.import_tensorrt()
    except T.TensorRTUnavailable:
        return False
    return True


HAS_TRT = _tensorrt_importable()
NO_GPU_TRT = "TensorRT 10 with a CUDA GPU is not available here (pip install '.[gpu]' on one)"


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: its absence cannot be tested")
def test_missing_tensorrt_is_explained(tiny_ckpt, tmp_path, capsys):
    with pytest.raises(T.TensorRTUnavailable, match=r"tensorrt-cu12==10\.16\.1\.11"):
        T.import_tensorrt()
    argv = ["--checkpoint", str(tiny_ckpt), "--out", str(tmp_path / "m.onnx"),
            "--tensorrt", str(tmp_path / "m.engine")]  # fmt: skip
    assert main(argv) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()  # failed before the export, not after


def test_engine_options_are_checked(exported):
    path, _ = exported
    fp32, int8 = onnx.load(str(path)), onnx.load(str(C.int8_paths(path)[0]))
    assert not T.has_qdq(fp32)
    assert T.has_qdq(int8)
    T.check_precision("fp16", fp32)
    T.check_precision("int8", int8)
    with pytest.raises(ValueError, match=r"valid: \['fp32', 'fp16', 'int8'\]"):
        T.check_precision("bf16", fp32)
    with pytest.raises(ValueError, match="Q/DQ ONNX"):
        T.check_precision("int8", fp32)
    with pytest.raises(ValueError, match="from the fp32 ONNX"):
        T.check_precision("fp16", int8)
    assert T.profile_shapes(32, 8) == {"min": (1, 64, 64, 3), "opt": (8, 64, 64, 3),
                                       "max": (32, 64, 64, 3)}  # fmt: skip
    with pytest.raises(ValueError, match="opt_batch"):
        T.profile_shapes(8, 16)


def test_onnxruntime_gpu_provider_options(tmp_path):
    trt, _, cpu = T.ort_providers("tensorrt", precision="int8", max_batch=128, cache_dir="c")
    name, opts = trt
    assert name == "TensorrtExecutionProvider"
    assert cpu == "CPUExecutionProvider"
    assert opts["trt_int8_enable"]
    assert opts["trt_fp16_enable"]
    assert opts["trt_engine_cache_enable"]
    assert opts["trt_profile_max_shapes"] == "image:128x64x64x3"
    assert opts["trt_profile_min_shapes"] == "image:1x64x64x3"
    assert T.ort_providers("cuda")[0][0] == "CUDAExecutionProvider"
    with pytest.raises(ValueError, match=r"valid: \['tensorrt', 'cuda'\]"):
        T.ort_providers("rocm")


def test_onnxruntime_gpu_path_does_not_fall_back_silently(exported):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the TensorRT provider")
    with pytest.raises(T.TensorRTUnavailable, match="not TensorrtExecutionProvider"):
        T.ort_session(exported[0], "tensorrt")


@pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()), reason=NO_GPU_TRT)
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_matches_onnxruntime(exported, tmp_path, precision):
    path, _ = exported
    src = path
    if precision == "int8":
        calib = random_images(64)
        src = E.save(Q.tensorrt_qdq(onnx.load(str(path)), calib), tmp_path / "qdq.onnx")
    engine = T.build_engine(src, tmp_path / f"{precision}.engine", precision=precision,
                            max_batch=64)  # fmt: skip
    runner = T.EngineRunner(engine)
    x = random_images(64)
    ref = E.run_onnx(E.session(path), x)
    got = runner.logits(torch.from_numpy(x).cuda()).cpu().numpy()
    if precision == "fp16":
        assert np.abs(got - ref).max() < 0.05
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9

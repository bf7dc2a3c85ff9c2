"""The model zoo: structure, parameter counts, unit formulas, stochastic depth, plain twins."""

import dataclasses
import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training import models as M
from training import summary as S
from training.config import ConfigError
from training.stochastic_depth import (
    expected_active_blocks,
    expected_active_depth,
    survival_probabilities,
)

TINY = {"widths": (4, 8, 8, 16)}  # narrow ResNets: the structure without the cost


def tiny(name="resnet18", **overrides):
    return M.build_model(name, **{**TINY, **overrides})


def randomize_bn(model, seed=0):
    """Non-trivial BN parameters and statistics, so formulas cannot pass by BN being identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                ranges = ((m.weight, 0.5, 1.5), (m.bias, -0.5, 0.5))
                ranges += ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0))
                for t, lo, hi in ranges:
                    t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model


# --- every named model ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(M.ARCHITECTURES))
def test_every_named_model_outputs_200_logits(name):
    model = M.build_model(name).eval()
    # The spec nets size their FC for 64 px; the ResNets take any size, 32 px is cheaper.
    side = 64 if model.config.family == "spec" else 32
    with torch.no_grad():
        out = model(torch.randn(2, 3, side, side))
    assert out.shape == (2, 200)
    assert torch.isfinite(out).all()


# --- parameter counts, derived by hand -----------------------------------------------------------


def bn(c):
    return 2 * c  # weight and bias (running statistics are buffers)


def hand_count(block, layers, classes=200):
    """He et al. 2015 Table 1 with projection shortcuts (option B) and the 7×7 ImageNet stem."""
    n, cin = 7 * 7 * 3 * 64 + bn(64), 64
    for stage, (blocks, width) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            if block == "basic":
                cout = width
                n += 9 * cin * width + bn(width) + 9 * width * width + bn(width)
            else:
                cout = 4 * width
                n += cin * width + bn(width) + 9 * width * width + bn(width)
                n += width * cout + bn(cout)
            if stride != 1 or cin != cout:
                n += cin * cout + bn(cout)  # 1×1 projection + BN
            cin = cout
    return n + cin * classes + classes


@pytest.mark.parametrize(
    ("name", "block", "layers"),
    [
        ("resnet18", "basic", (2, 2, 2, 2)),
        ("resnet34", "basic", (3, 4, 6, 3)),
        ("resnet50", "bottleneck", (3, 4, 6, 3)),
    ],
)
def test_parameter_counts_match_hand_computation(name, block, layers):
    assert S.param_count(M.build_model(name)) == hand_count(block, layers)


def test_resnet34_has_21_4_million_parameters():
    # Independent check: torchvision's resnet34 has 21,797,672 parameters for 1000 classes;
    # 200 classes remove 512·800 weights and 800 biases from the classifier.
    n = S.param_count(M.build_model("resnet34"))
    assert n == 21_797_672 - 512 * 800 - 800 == 21_387_272


def test_parameter_free_shortcut_and_plain_twin_drop_exactly_the_projections():
    projections = sum(64 * 2**k * 128 * 2**k + bn(128 * 2**k) for k in range(3))
    full = hand_count("basic", (3, 4, 6, 3))
    assert S.param_count(M.build_model("resnet34-pad")) == full - projections
    assert S.param_count(M.build_model("plain34")) == full - projections


# --- unit variants: each computes its formula ----------------------------------------------------


def conv(x, c, stride=1):
    return F.conv2d(x, c.weight, None, stride, c.kernel_size[0] // 2)


def bnf(x, m):
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def basic_formula(block, x, variant, stride, shortcut, p):
    """He et al. 2016 Figure 4 (Sun's Figure 9), written out; p scales f as at test time."""
    c1, c2 = (m for m in block.branch if isinstance(m, nn.Conv2d))
    b = [m for m in block.branch if isinstance(m, nn.BatchNorm2d)]
    s = shortcut(x)
    if variant == "a":  # original: relu(x + bn(conv(relu(bn(conv x)))))
        return F.relu(s + p * bnf(conv(F.relu(bnf(conv(x, c1, stride), b[0])), c2), b[1]))
    if variant == "b":  # BN after addition
        f = conv(F.relu(bnf(conv(x, c1, stride), b[0])), c2)
        return F.relu(bnf(s + p * f, block.post[0]))
    if variant == "c":  # ReLU before addition
        return s + p * F.relu(bnf(conv(F.relu(bnf(conv(x, c1, stride), b[0])), c2), b[1]))
    if variant == "d":  # ReLU-only pre-activation
        return s + p * bnf(conv(F.relu(bnf(conv(F.relu(x), c1, stride), b[0])), c2), b[1])
    # (e) full pre-activation
    return s + p * conv(F.relu(bnf(conv(F.relu(bnf(x, b[0])), c1, stride), b[1])), c2)


def shortcut_formula(block, kind, stride, cin, cout):
    if stride == 1 and cin == cout:
        return lambda x: x
    if kind == "projection":
        c, b = block.shortcut
        return lambda x: bnf(F.conv2d(x, c.weight, None, stride), b)
    return lambda x: F.pad(
        F.avg_pool2d(x, stride) if stride > 1 else x, (0, 0, 0, 0, 0, cout - cin)
    )


@pytest.mark.parametrize("variant", M.VARIANTS)
@pytest.mark.parametrize(
    ("cin", "cout", "stride", "kind"),
    [
        (8, 8, 1, "projection"),
        (8, 16, 2, "projection"),
        (8, 16, 2, "avgpool-pad"),
        (8, 16, 1, "avgpool-pad"),
    ],
)
@pytest.mark.parametrize("p", [1.0, 0.6])
def test_basic_unit_variant_computes_its_formula(variant, cin, cout, stride, kind, p):
    cfg = M.ModelConfig(variant=variant, shortcut=kind)
    block = randomize_bn(M.make_block(cfg, cin, cout, stride)).eval()
    block.survival = p  # eval: the branch is scaled by p_l (Sun §5.1)
    x = torch.randn(2, cin, 8, 8)
    expected = basic_formula(
        block, x, variant, stride, shortcut_formula(block, kind, stride, cin, cout), p
    )
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("variant", ["a", "e"])
def test_bottleneck_unit_computes_its_formula(variant):
    cfg = M.ModelConfig(block="bottleneck", variant=variant)
    block = randomize_bn(M.make_block(cfg, 16, 8, 2)).eval()
    c1, c2, c3 = (m for m in block.branch if isinstance(m, nn.Conv2d))
    b = [m for m in block.branch if isinstance(m, nn.BatchNorm2d)]
    x = torch.randn(2, 16, 8, 8)
    sc, sb = block.shortcut
    s = bnf(F.conv2d(x, sc.weight, None, 2), sb)
    if variant == "a":  # 1×1, 3×3 (stride 2, as torchvision v1.5), 1×1 ×4
        h = F.relu(bnf(conv(F.relu(bnf(conv(x, c1), b[0])), c2, 2), b[1]))
        expected = F.relu(s + bnf(conv(h, c3), b[2]))
    else:
        h = conv(F.relu(bnf(conv(F.relu(bnf(x, b[0])), c1), b[1])), c2, 2)
        expected = s + conv(F.relu(bnf(h, b[2])), c3)
    assert block(x).shape == (2, 32, 4, 4)
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("variant", ["a", "e"])
def test_network_eval_output_is_the_p_scaled_composition(variant):
    model = randomize_bn(tiny(variant=variant, survival_last=0.5)).eval()
    ps = [b.survival for b in M.residual_blocks(model)]
    assert ps == list(survival_probabilities(8, 0.5))
    x = torch.randn(2, 3, 32, 32)
    h = model.stem(x)
    for block in M.residual_blocks(model):
        h = block.post(block.shortcut(h) + block.survival * block.branch(h))
    torch.testing.assert_close(model(x), model.head(h))


@pytest.mark.parametrize("variant", M.VARIANTS)
def test_zero_init_residual_makes_every_block_start_as_its_shortcut(variant):
    model = tiny(variant=variant, zero_init_residual=True).eval()
    h = model.stem(torch.randn(2, 3, 32, 32))
    for block in M.residual_blocks(model):
        assert torch.count_nonzero(block.branch(h)) == 0
        torch.testing.assert_close(block(h), block.post(block.shortcut(h)))
        h = block(h)


# --- stochastic depth ----------------------------------------------------------------------------


def test_survival_schedule_is_huangs_linear_decay():
    p = survival_probabilities(16, 0.5)
    assert p[0] == pytest.approx(1 - 1 / 32)
    assert p[-1] == pytest.approx(0.5)
    assert all(a - b == pytest.approx(1 / 32) for a, b in itertools.pairwise(p))
    assert survival_probabilities(16, 1.0) == (1.0,) * 16
    # Huang et al.: E[active blocks] = (3L - 1)/4 for p_L = 0.5.
    assert expected_active_blocks(p) == pytest.approx((3 * 16 - 1) / 4) == 11.75
    # Sun's Table 2 (16 → 12.3 blocks, 34 → 26.6 layers) is the same line indexed from 0.
    p0 = survival_probabilities(16, 0.5, first_index=0)
    assert expected_active_blocks(p0) == pytest.approx(12.25)  # 12.3 to one decimal
    assert expected_active_depth(p0, [2] * 16, 2) == pytest.approx(26.5)
    with pytest.raises(ValueError, match="survival"):
        survival_probabilities(16, 0.0)


def test_resnet34_depth_statistics():
    stats = M.depth_stats(M.build_model("resnet34-sd"))
    assert (stats["blocks"], stats["depth"]) == (16, 34)
    assert stats["expected_active_blocks"] == pytest.approx(11.75)
    assert stats["expected_active_depth"] == pytest.approx(2 + 2 * 11.75)
    assert math.isnan(stats["active_blocks"])  # no training forward yet
    assert M.depth_stats(M.build_model("resnet50"))["depth"] == 50
    assert M.depth_stats(M.build_model("resnet18"))["depth"] == 18


def run_count(block):
    calls = []
    block.branch.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize(
    ("variant", "cin", "cout", "stride"), [("e", 8, 8, 1), ("a", 8, 8, 1), ("a", 8, 16, 2)]
)
def test_dropped_block_returns_its_shortcut_and_its_branch_gets_no_gradient(
    variant, cin, cout, stride
):
    torch.manual_seed(0)
    block = M.make_block(M.ModelConfig(variant=variant), cin, cout, stride).train()
    block.survival = 0.5
    calls = run_count(block)
    outcomes = set()
    for _ in range(20):
        x = torch.rand(2, cin, 8, 8, requires_grad=True)  # ≥ 0, like the output of a ReLU
        before = len(calls)
        out = block(x)
        out.sum().backward()
        ran = len(calls) > before
        outcomes.add(ran)
        grads = [p.grad for p in block.branch.parameters()]
        if not ran:
            with torch.no_grad():
                expected = x if block.shortcut is not None and stride == 1 else block.shortcut(x)
            assert torch.equal(out, F.relu(expected) if variant == "a" else expected)
            assert all(g is None for g in grads)
            assert x.grad is not None  # the shortcut still carries the gradient
        else:
            assert all(g is not None for g in grads)
        block.zero_grad(set_to_none=True)
    assert outcomes == {True, False}


def test_empirical_survival_rates_match_the_schedule():
    torch.manual_seed(1)
    model = M.build_model("resnet34", widths=(2, 2, 2, 2), stem="cifar", survival_last=0.5)
    model.train()
    blocks = M.residual_blocks(model)
    calls = [run_count(b) for b in blocks]
    n = 600
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for _ in range(n):
            model(x)
    for b, c in zip(blocks, calls, strict=True):
        assert b.runs == n
        assert b.kept == len(c)  # a dropped branch is never called
        sigma = math.sqrt(b.survival * (1 - b.survival) / n)
        assert abs(b.kept / n - b.survival) <= 4 * sigma + 1e-9
    stats = M.depth_stats(model, reset=True)
    assert stats["active_blocks"] == pytest.approx(stats["expected_active_blocks"], abs=0.3)
    assert stats["active_depth"] == pytest.approx(stats["expected_active_depth"], abs=0.6)
    assert stats["active_blocks"] < 13 < stats["blocks"]
    assert all(b.runs == 0 for b in blocks)  # reset


def test_stochastic_depth_follows_torch_seed_and_eval_is_deterministic():
    model = tiny(survival_last=0.3)
    x = torch.randn(2, 3, 32, 32)

    def train_outputs(seed):
        torch.manual_seed(seed)
        model.train()
        return [model(x) for _ in range(4)]

    a, b, c = train_outputs(0), train_outputs(0), train_outputs(5)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))
    model.eval()
    runs = [blk.runs for blk in M.residual_blocks(model)]
    assert torch.equal(model(x), model(x))
    assert [blk.runs for blk in M.residual_blocks(model)] == runs  # eval draws nothing


def test_sample_mode_drops_per_image_and_keeps_state_dict_keys():
    torch.manual_seed(0)
    batch = M.build_model("resnet18", widths=(4, 8, 16, 32), stem="cifar", survival_last=0.5)
    sample = M.build_model(batch.config.__class__(**{**dataclasses.asdict(batch.config),
                                                     "drop_mode": "sample"}))  # fmt: skip
    assert set(sample.state_dict()) == set(batch.state_dict())  # checkpoints load either way
    block = M.residual_blocks(sample)[-1]  # p_L = 0.5
    block.train()
    y = torch.ones(400, 3, 2, 2)
    out = block.drop(y)
    kept = out.flatten(1).amax(1)
    assert set(kept.tolist()) <= {0.0, 1.0}  # whole images, unscaled (Huang's convention)
    assert 0.4 < kept.mean().item() < 0.6
    assert block.runs == 0  # the batch-mode counters stay outside the sample path
    block.eval()
    torch.testing.assert_close(block.drop(y), 0.5 * y)


def test_plain_net_rejects_stochastic_depth():
    with pytest.raises(ConfigError, match="shortcuts"):
        M.build_model("plain34", survival_last=0.5)


# --- Ebrahimi & Abadi: dropout block, Table 1, plain twins -----------------------------------


def kinds(module):
    return [type(m).__name__ for m in module]


def test_ebrahimi_basic_block_has_dropout_between_its_convs():
    model = M.build_model("ebrahimi-net1")
    for block in M.residual_blocks(model):
        assert kinds(block.branch) == [
            *("Conv2d", "BatchNorm2d", "ReLU"),
            "Dropout",
            *("Conv2d", "BatchNorm2d"),
        ]
        assert block.branch[3].p == 0.5
        assert not list(block.shortcut.parameters())  # Ebrahimi & Abadi §2: parameter-free


def test_ebrahimi_nets_have_table_1_depths():
    depth = {n: M.depth_stats(M.build_model(f"ebrahimi-net{n}"))["depth"] for n in range(1, 7)}
    # Table 1's "Number of layers" (convs + FC) for Nets 1, 2, 3 and 6. Nets 4 and 5 as listed
    # have 19 and 13, where the table says 21 and 15.
    assert (depth[1], depth[2], depth[3], depth[6]) == (15, 12, 17, 15)
    assert (depth[4], depth[5]) == (19, 13)


def test_net6_is_net1_without_shortcuts():
    net1, net6 = M.build_model("ebrahimi-net1"), M.build_model("ebrahimi-net6")
    assert net6.config == M.plain_twin(net1.config)
    convs = [m.out_channels for m in net6.modules() if isinstance(m, nn.Conv2d)]
    # Table 1, Net 6: (Conv 64)×2, (Conv 64)×2, (Conv 128)×2, (Conv 128)×2, (Conv 256)×2,
    # (Conv 256)×2, (Conv 512)×2.
    assert convs == [64] * 4 + [128] * 4 + [256] * 4 + [512] * 2
    assert S.param_count(net6) == S.param_count(net1)  # the shortcuts had no parameters


def without_additions(module, h):
    """Run `module` as a chain of its layers, each block as post(branch(h)): no shortcut."""
    if isinstance(module, M.ResidualBlock):
        return module.post(module.branch(h))
    if isinstance(module, M.Chain):
        for child in module:
            h = without_additions(child, h)
        return h
    return module(h)


@pytest.mark.parametrize("name", ["plain18", "ebrahimi-net6"])
def test_plain_twin_has_no_shortcut_additions(name):
    model = randomize_bn(M.build_model(name, **(TINY if name == "plain18" else {}))).eval()
    blocks = M.residual_blocks(model)
    assert blocks
    assert all(b.shortcut is None for b in blocks)
    x = torch.randn(1, 3, 64, 64)
    h = without_additions(model.body, model.stem(x))
    torch.testing.assert_close(model(x), model.head(h))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "resnet18"},
        {"name": "resnet18", "variant": "e", "zero_init_residual": True, "survival_last": 0.5},
        {"name": "resnet50", "widths": (4, 4, 4, 4), "variant": "c"},
        {"name": "plain34"},
        {"name": "ebrahimi-net2"},
    ],
)
def test_gradients_reach_the_first_layer(kwargs):
    torch.manual_seed(0)
    name = kwargs.pop("name")
    overrides = {**TINY, **kwargs} if not name.startswith("ebrahimi") else kwargs
    model = M.build_model(name, **overrides).train()
    F.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3])).backward()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.weight.grad is not None
    assert first.weight.grad.abs().sum() > 0


# --- stems and cost ------------------------------------------------------------------------------


def test_stems_set_the_maps_and_the_cost():
    sides = {s: S.stem_size(M.build_model("resnet34", stem=s)) for s in M.STEMS}
    assert sides == {"imagenet": 16, "small": 32, "cifar": 64}
    macs = {s: S.count_macs(M.build_model("resnet18", stem=s)) for s in M.STEMS}
    assert 3.5 < macs["small"] / macs["imagenet"] < 4.1
    assert 14 < macs["cifar"] / macs["imagenet"] < 16.5  # "about 16×"


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet34-e-sd", "ebrahimi-net4", "resnet50"])
def test_config_round_trips_through_json(name):
    cfg = M.ARCHITECTURES[name]
    again = M.ModelConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg
    torch.manual_seed(0)
    a = M.build_model(cfg).state_dict()
    torch.manual_seed(0)
    b = M.build_model(again).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: M.ModelConfig.from_dict({"depth": 34}),
            "valid: block, drop_mode, dropout, family",
        ),
        (lambda: M.build_model("resnet35"), "valid: ebrahimi-convnet7"),
        (lambda: M.build_model("resnet34", variant="f"), "valid: a, b, c, d, e"),
        (lambda: M.build_model("resnet34", stem="tiny"), "valid: imagenet, small, cifar"),
        (lambda: M.build_model("resnet34", shortcut="zero"), "valid: projection, avgpool-pad"),
        (lambda: M.build_model("resnet34", block="wide"), "valid: basic, bottleneck"),
        (lambda: M.build_model("resnet34", colour=1), "valid: block"),
        (lambda: M.build_model("ebrahimi-net1", spec="conv64 bb fc"), "valid: convW"),
        (lambda: M.build_model("ebrahimi-net1", spec="conv64"), "ending in one fc"),
        (lambda: M.build_model("ebrahimi-net1", stem="cifar"), "unset"),
        (lambda: M.build_model("resnet34", layers=(3, 4)), "same length"),
        (lambda: M.build_model("resnet34", survival_last=0.0), r"\(0, 1\]"),
    ],
)
def test_unsupported_values_fail_listing_the_valid_ones(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


# --- export and CLI ------------------------------------------------------------------------------


def test_eval_model_exports_without_python_randomness():
    model = tiny(variant="e", survival_last=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


def test_cli_list_and_layer_table(capsys):
    assert S.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in M.ARCHITECTURES:
        assert f"\n{name} " in out
    row = next(line for line in out.splitlines() if line.startswith("resnet34 "))
    assert row.split()[1:5] == ["21.39M", "0.598", "imagenet", "16×16"]
    assert "64×64" in next(line for line in out.splitlines() if line.startswith("resnet34-cifar"))
    assert S.main(["resnet18", "--set", "variant=e"]) == 0
    table = capsys.readouterr().out
    assert "'variant': 'e'" in table
    assert "head.4" in table  # (e) ends with BN-ReLU before the pool
    assert f"total: {S.param_count(M.build_model('resnet18', variant='e')):,} parameters" in table
    assert S.main(["resnet18", "--set", "stem=huge"]) == 2
    assert "valid: imagenet, small, cifar" in capsys.readouterr().err

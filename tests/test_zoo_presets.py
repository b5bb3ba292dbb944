"""Presets that reproduce released models (official CBAM, ECA's released kernels, GCNet as in mmdetection)
and SE's size: parameter deltas on ResNet-50, outputs and initialisation against the official code."""

from __future__ import annotations

import copy
import typing

import pytest
import torch
import torchvision
from timm.layers import EcaModule, GlobalContext
from timm.layers.cbam import CbamModule
from torch import nn

import modules_zoo
from modules_zoo.added_arguments import added_defaults
from modules_zoo.presets import ECA_RELEASED_KERNELS
from stitch.config import NestedInsertionCfg
from stitch.errors import StitchingError
from stitch.runs import resolved_insertion
from stitch.surgery import Insertion, count_params, stitch

try:  # tests/ may or may not become a package
    from . import reference_impls as ref
except ImportError:
    import reference_impls as ref

#: ResNet-50's bottleneck output widths and block counts per stage (c2..c5)
RESNET50_STAGES = ((256, 3), (512, 4), (1024, 6), (2048, 3))
EVERY_BN3 = "layer*.*.bn3"
C3_TO_C5_BN3 = ["layer2.*.bn3", "layer3.*.bn3", "layer4.*.bn3"]


def build(name: str, channels: int, **args: object) -> nn.Module:
    return modules_zoo.get(name).build({"channels": channels}, args)


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet50().eval()


@pytest.mark.parametrize(
    ("module", "args", "at", "delta"),
    [
        ("SE", {}, EVERY_BN3, 2_530_992),  # the SENet paper's SE-ResNet-50 count
        ("CBAM", {"preset": "official"}, EVERY_BN3, 2_532_592),  # official ResidualNet(..., 'CBAM')
        ("CBAM", {}, EVERY_BN3, 2_516_544),  # timm's bias-free MLP
        ("ECA", {"preset": "resnet50"}, EVERY_BN3, 80),  # eca_resnet50_k3557 (README: 80)
        ("ECA", {}, EVERY_BN3, 86),  # the paper's adaptive rule: 5, 5, 5, 7
        ("GC", {"preset": "mmdet"}, C3_TO_C5_BN3, 2_521_741),  # mmdetection r16-gcb-c3-c5
    ],
)
def test_resnet50_parameter_deltas_through_stitching(resnet50, module, args, at, delta) -> None:
    """Stitched after ``bn3`` (before the residual add, the official place) of torchvision's
    ResNet-50, the probe running at 32x32."""
    model = copy.deepcopy(resnet50)
    before = count_params(model)
    x = torch.randn(1, 3, 32, 32)
    ins = [Insertion(module, NestedInsertionCfg(module=module, args=args, at=at, mode="after"))]
    applied = stitch(model, {}, lambda m: m(x), ins, 0)
    assert len(applied) == (16 if at == EVERY_BN3 else 13)
    assert sum(a.params for a in applied) == count_params(model) - before == delta


def test_official_transcriptions_have_the_published_counts() -> None:
    """The deltas above are the official modules' own counts (transcriptions, built per block)."""
    per_block = [c for c, n in RESNET50_STAGES for _ in range(n)]
    assert sum(ref.panet_param_count(ref.CbamOfficial(c, 16)) for c in per_block) == 2_532_592
    kernels = ECA_RELEASED_KERNELS["resnet50"]
    assert sum(ref.panet_param_count(ref.EcaOfficial(c, kernels[c])) for c in per_block) == 80
    c3_c5 = per_block[3:]
    assert sum(ref.panet_param_count(ref.ContextBlockOfficial(c, 1.0 / 16)) for c in c3_c5) == 2_521_741
    # mmdetection's r4 configs: the preset with rd_ratio 0.25
    assert (
        sum(ref.panet_param_count(build("GC", c, preset="mmdet", rd_ratio=0.25)) for c in c3_c5) == 10_000_909
    )


# ------------------------------------------------------------------------------------------------
# CBAM
# ------------------------------------------------------------------------------------------------
def test_cbam_official_matches_the_official_module_in_eval_and_train() -> None:
    """40 channels: the official ``40 // 16 = 2`` hidden units (timm would round 2.5 up to 3);
    the spatial gate's (max, mean) order, BN momentum 0.01 (running stats after a train step)."""
    torch.manual_seed(0)
    official = ref.perturbed(ref.CbamOfficial(40, 16), 0.3).double()
    ours = build("CBAM", 40, preset="official").double()
    ours.load_state_dict(ref.cbam_official_to_timm(official.state_dict()))
    x = torch.randn(3, 40, 6, 5, dtype=torch.float64)
    official.eval()
    ours.eval()
    torch.testing.assert_close(ours(x), official(x), rtol=0, atol=1e-12)
    official.train()
    ours.train()
    torch.testing.assert_close(ours(x), official(x), rtol=0, atol=1e-12)
    bn = ours.spatial.conv.bn
    assert bn.momentum == 0.01
    torch.testing.assert_close(
        bn.running_mean, official.SpatialGate.spatial.bn.running_mean, rtol=0, atol=1e-14
    )
    torch.testing.assert_close(
        bn.running_var, official.SpatialGate.spatial.bn.running_var, rtol=0, atol=1e-14
    )
    # timm's order (the default) gives another output with the same weights
    timm_order = build("CBAM", 40, mlp_bias=True, rd_ratio=2 / 40).double().eval()
    timm_order.load_state_dict(ours.state_dict())
    assert not torch.allclose(timm_order(x), ours.eval()(x))


def test_cbam_official_initialisation_follows_the_official_fill_rules() -> None:
    """Spatial BN weight and bias 0, MLP biases 0, spatial conv kaiming normal with fan_out = 49
    (std sqrt(2 / 49) = 0.202; PyTorch's default would give 0.058), pooled over 30 modules."""
    torch.manual_seed(0)
    modules = [build("CBAM", 32, preset="official") for _ in range(30)]
    for m in modules:
        assert not m.spatial.conv.bn.weight.any() and not m.spatial.conv.bn.bias.any()
        assert not m.channel.fc1.bias.any() and not m.channel.fc2.bias.any()
    weights = torch.cat([m.spatial.conv.conv.weight.flatten() for m in modules])
    assert abs(weights.std().item() / (2 / 49) ** 0.5 - 1) < 0.08
    assert abs(weights.mean().item()) < 0.02
    # the transcribed official loop leaves the same zeros
    official = ref.CbamOfficial(32, 16)
    ref.cbam_official_init(official)
    assert not official.SpatialGate.spatial.bn.weight.any() and not official.ChannelGate.mlp[1].bias.any()


# ------------------------------------------------------------------------------------------------
# ECA
# ------------------------------------------------------------------------------------------------
def test_eca_presets_pick_the_released_kernel_per_stage_and_match_eca_layer() -> None:
    kernels = [build("ECA", c, preset="resnet50").conv.kernel_size[0] for c, _ in RESNET50_STAGES]
    assert kernels == [3, 5, 5, 7]
    assert [build("ECA", c).conv.kernel_size[0] for c, _ in RESNET50_STAGES] == [5, 5, 5, 7]  # paper rule
    hint = typing.get_type_hints(modules_zoo.get("ECA").builder)["preset"]
    assert set(typing.get_args(typing.get_args(hint)[0])) == set(ECA_RELEASED_KERNELS)
    official = ref.EcaOfficial(512, k_size=5).double()
    ours = build("ECA", 512, preset="resnet50").double()
    ours.load_state_dict(official.state_dict())
    x = torch.randn(2, 512, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x), official(x), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# GCNet (mmcv ContextBlock)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("module", "fusion", "use_attn"),
    [("GC", None, True), ("GCA", None, False), ("GC", "mul", True), ("GC", "both", True)],
)
def test_gc_mmdet_matches_mmcv_context_block(module, fusion, use_attn) -> None:
    """40 channels at ratio 1/16: mmcv's ``int(2.5) = 2`` (timm: 3); LayerNorm eps 1e-5."""
    torch.manual_seed(0)
    types = {None: ("channel_add",), "mul": ("channel_mul",), "both": ("channel_add", "channel_mul")}[fusion]
    official = ref.ContextBlockOfficial(40, 1.0 / 16, "att" if use_attn else "avg", types)
    official = ref.perturbed(official, 0.3).double().eval()
    args = {"preset": "mmdet", "use_attn": use_attn} | ({"fusion": fusion} if fusion else {})
    ours = build(module, 40, **args).double().eval()
    ours.load_state_dict(ref.context_block_to_timm(official.state_dict()))
    x = torch.randn(2, 40, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(x), official(x), rtol=0, atol=1e-12)


def test_gc_mmdet_initialisation_is_mmcvs() -> None:
    """Add fusion: the identity at initialisation (timm's GCA is not: its last bias is random);
    conv_attn bias 0, LayerNorm eps 1e-5; multiplicative fusion starts at a 0.5 gate."""
    torch.manual_seed(0)
    x = torch.randn(2, 64, 5, 5)
    add = build("GC", 64, preset="mmdet")
    assert torch.equal(add(x), x)
    assert not add.conv_attn.bias.any() and add.mlp_add.norm.eps == 1e-5
    assert not torch.equal(build("GCA", 64)(x), x)
    mul = build("GC", 64, preset="mmdet", fusion="mul")
    assert torch.equal(mul(x), x * 0.5) and mul.mlp_scale.norm.eps == 1e-5
    official = ref.ContextBlockOfficial(64, 1.0 / 16)
    assert not official.conv_mask.bias.any() and torch.equal(official(x), x)


# ------------------------------------------------------------------------------------------------
# presets and explicit arguments; defaults unchanged
# ------------------------------------------------------------------------------------------------
def test_preset_conflicts_are_one_line_errors_and_free_arguments_apply(resnet50) -> None:
    """A preset fixes what the release fixes (ECA's kernel, CBAM's 7x7 conv: another value is a
    one-line error when stitching); what the official code takes as an argument stays free
    (GC's ratio and fusion, CBAM's reduction ratio)."""
    x = torch.randn(1, 3, 32, 32)
    for module, args, says in [
        ("ECA", {"preset": "resnet50", "kernel_size": 3}, "set kernel_size or preset, not both"),
        ("CBAM", {"preset": "official", "kernel_size": 5}, "preset 'official' has a 7x7 spatial conv"),
        ("ECA", {"preset": "resnet18"}, "has kernel sizes for 64, 128, 256, 512 channels .*not 2048"),
    ]:
        ins = [Insertion("X", NestedInsertionCfg(module=module, args=args, at="layer4.0.bn3", mode="after"))]
        with pytest.raises(StitchingError, match=says) as err:
            stitch(copy.deepcopy(resnet50), {}, lambda m: m(x), ins, 0)
        assert "\n" not in str(err.value)
    assert build("GC", 512, preset="mmdet", rd_ratio=0.25).mlp_add.fc1.out_channels == 128
    assert build("GC", 512, preset="mmdet").mlp_add.fc1.out_channels == 32  # 1/16, not timm's 1/8
    assert build("GC", 512, preset="mmdet", fusion="both").mlp_scale is not None
    assert build("CBAM", 512, preset="official", rd_ratio=1 / 8).channel.fc1.out_channels == 64


def test_defaults_are_unchanged_and_new_arguments_are_declared() -> None:
    """Without a preset each builder makes the same timm module, with the same weights, as before
    the presets existed; every argument added since is declared (for run ids to leave it out at its default)."""
    before = {
        "CBAM": (lambda: CbamModule(64, rd_ratio=1 / 16, spatial_kernel_size=7, mlp_bias=False), {"preset"}),
        "ECA": (lambda: EcaModule(64, gamma=2.0, beta=1.0), {"preset"}),
        "GC": (
            lambda: GlobalContext(64, use_attn=True, fuse_add=False, fuse_scale=True, rd_ratio=1 / 8),
            {"preset", "fusion"},
        ),
        "GCA": (
            lambda: GlobalContext(64, use_attn=True, fuse_add=True, fuse_scale=False, rd_ratio=1 / 8),
            {"preset"},
        ),
    }
    for name, (old, added) in before.items():
        torch.manual_seed(3)
        expected = old().state_dict()
        torch.manual_seed(3)
        got = build(name, 64).state_dict()
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got), name
        builder = modules_zoo.get(name).builder
        assert added_defaults(builder) == dict.fromkeys(added), name


def test_arguments_added_with_the_presets_leave_run_ids_unchanged() -> None:
    """A preset-less insertion resolves to the arguments it had before the presets existed (so its
    run id stays); a preset (or GC's fusion) set is recorded."""
    before = {
        "CBAM": {"rd_ratio": 1 / 16, "kernel_size": 7, "mlp_bias": False},
        "ECA": {"kernel_size": None, "gamma": 2.0, "beta": 1.0},
        "GC": {"rd_ratio": 1 / 8, "use_attn": True},
        "GCA": {"rd_ratio": 1 / 8, "use_attn": True},
    }
    for name, args in before.items():
        assert resolved_insertion({"module": name, "at": "enc1"})["args"] == args, name
        assert resolved_insertion({"module": name, "at": "enc1", "args": {"preset": None}})["args"] == args
    assert (
        resolved_insertion({"module": "GC", "at": "enc1", "args": {"preset": "mmdet"}})["args"]["preset"]
        == "mmdet"
    )
    assert (
        resolved_insertion({"module": "GC", "at": "enc1", "args": {"fusion": "add"}})["args"]["fusion"]
        == "add"
    )

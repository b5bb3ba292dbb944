"""SplitAttention as ResNeSt places it: the 3x3 conv of a ResNet bottleneck (bn2 absorbed, avd,
ResNeSt init), checked against the official ResNeSt Bottleneck and timm's ResNestBottleneck."""

from __future__ import annotations

import math

import pytest
import torch
from timm.layers import SplitAttn
from timm.models.resnest import ResNestBottleneck
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from modules_zoo.split_attention import SplitAttention
from stitch.config import NestedInsertionCfg
from stitch.errors import StitchingError
from stitch.surgery import Applied, Insertion, stitch

try:  # tests/ may or may not become a package
    from .reference_impls import perturbed
except ImportError:
    from reference_impls import perturbed

IN, PLANES, STRIDE = 64, 32, 2  # a stride-2 first block with a down-sampling shortcut, small widths


def _block() -> Bottleneck:
    ds = nn.Sequential(nn.Conv2d(IN, PLANES * 4, 1, STRIDE, bias=False), nn.BatchNorm2d(PLANES * 4))
    return Bottleneck(IN, PLANES, STRIDE, ds)


def _stitch_conv2(block: nn.Module, args: dict, mode: str = "replace") -> Applied:
    x = torch.randn(2, block.conv1.in_channels, 16, 12)
    cfg = NestedInsertionCfg(module="SplitAttention", at="conv2", mode=mode, args=args)
    (applied,) = stitch(block, {}, lambda m: m(x), [Insertion("SA", cfg)])
    return applied


def _reference(kind: str, avd: bool, avd_first: bool) -> nn.Module:
    ds = nn.Sequential(nn.Conv2d(IN, PLANES * 4, 1, STRIDE, bias=False), nn.BatchNorm2d(PLANES * 4))
    block = {"radix": 2, "cardinality": 1, "avd": avd, "avd_first": avd_first, "is_first": True}
    if kind == "timm":
        return ResNestBottleneck(IN, PLANES, STRIDE, ds, **block)
    # the official package (pip ``resnest``; not a project dependency, so skip if absent)
    official = pytest.importorskip("resnest.torch.resnet")
    return official.Bottleneck(IN, PLANES, STRIDE, ds, **block, norm_layer=nn.BatchNorm2d)


@pytest.mark.parametrize("reference", ["official", "timm"])
@pytest.mark.parametrize(("avd", "avd_first"), [(False, False), (True, False), (True, True)])
def test_replaced_bottleneck_conv2_equals_resnest_bottleneck(
    reference: str, avd: bool, avd_first: bool
) -> None:
    torch.manual_seed(0)
    block = _block()
    applied = _stitch_conv2(block, {"avd": avd, "avd_first": avd_first})
    # bn2 is taken over: nn.Identity, its parameters counted as removed
    assert isinstance(block.bn2, nn.Identity)
    assert applied.absorbed == ["bn2"] and applied.absorbed_params == 2 * PLANES
    assert applied.delta == applied.params - applied.removed_params - 2 * PLANES
    assert block.conv2.conv.stride == ((1, 1) if avd else (STRIDE, STRIDE))
    perturbed(block, 0.1)
    ref = _reference(reference, avd, avd_first)
    # the same state-dict keys: conv2.{conv,bn0,fc1,bn1,fc2}; the pools and bn2 hold no parameters
    ref.load_state_dict(block.state_dict(), strict=True)
    block.double(), ref.double()
    x = torch.randn(2, IN, 16, 12, dtype=torch.float64)
    for train in (False, True):
        block.train(train), ref.train(train)
        with torch.no_grad():
            out = block(x)
            assert out.shape == (2, PLANES * 4, 8, 6)
            torch.testing.assert_close(out, ref(x), rtol=1e-12, atol=1e-12)
    # torchvision's shared ReLU after the (absorbed) bn2 is a no-op: split attention is >= 0
    with torch.no_grad():
        mid = block.conv2(torch.randn(2, PLANES, 16, 12, dtype=torch.float64))
    assert mid.min() >= 0


def test_bottleneck_false_keeps_bn2_and_the_old_block() -> None:
    torch.manual_seed(0)
    block = _block()
    applied = _stitch_conv2(block, {"bottleneck": False})
    assert isinstance(block.bn2, nn.BatchNorm2d) and applied.absorbed == [] and applied.absorbed_params == 0
    assert isinstance(block.conv2, SplitAttention) and block.conv2.conv.stride == (STRIDE, STRIDE)


def test_bottleneck_auto_absorbs_only_when_replacing_a_bottleneck_conv2() -> None:
    block = _block()
    assert _stitch_conv2(block, {}, mode="after").absorbed == []  # not a replacement
    assert isinstance(block.bn2, nn.BatchNorm2d)
    basic = BasicBlock(32, 32)  # conv2 of a BasicBlock: ResNeSt has no such block
    assert _stitch_conv2(basic, {}).absorbed == []
    assert isinstance(basic.bn2, nn.BatchNorm2d)


def test_bottleneck_true_elsewhere_is_a_one_line_error() -> None:
    with pytest.raises(StitchingError) as info:
        _stitch_conv2(BasicBlock(32, 32), {"bottleneck": True})
    message = str(info.value)
    assert "\n" not in message
    assert (
        "bottleneck: true needs mode replace at the conv2 of a torchvision ResNet Bottleneck "
        "(this point is 'conv2' in a BasicBlock, mode replace); use bottleneck: auto or false here"
    ) in message
    with pytest.raises(
        StitchingError, match="cannot build SplitAttention .*bottleneck must be auto, true or false"
    ):
        _stitch_conv2(_block(), {"bottleneck": "sometimes"})


def test_a_module_stitched_at_bn2_conflicts_in_one_line_unless_bn2_is_kept() -> None:
    x = torch.randn(2, IN, 16, 12)

    def both(sa_args: dict) -> list[Applied]:
        insertions = [
            Insertion("CA", NestedInsertionCfg(module="CoordAtt", at="bn2")),
            Insertion(
                "SA", NestedInsertionCfg(module="SplitAttention", at="conv2", mode="replace", args=sa_args)
            ),
        ]
        return stitch(_block(), {}, lambda m: m(x), insertions)

    with pytest.raises(StitchingError) as info:
        both({})
    assert str(info.value) == (
        "insertion 'SA' at 'conv2': SplitAttention takes over 'bn2', where insertion 'CA' is stitched; "
        "drop one of them"
    )
    assert [a.absorbed for a in both({"bottleneck": False})] == [[], []]


def test_resnest_init_statistics() -> None:
    channels, radix = 256, 2
    torch.manual_seed(0)
    plain = SplitAttention(channels, radix=radix)
    torch.manual_seed(0)
    m = SplitAttention(channels, radix=radix, init="resnest")
    inter = max(channels * radix // 4, 32)
    for conv, n in [(m.conv, 9 * channels * radix), (m.fc1, inter), (m.fc2, channels * radix)]:
        w = conv.weight.detach()
        std = math.sqrt(2.0 / n)  # normal(0, sqrt(2 / (k*k*out))), groups not counted
        assert abs(w.std().item() / std - 1) < 0.03 and abs(w.mean().item()) < 0.03 * std
    for name in ("fc1", "fc2"):  # conv biases keep PyTorch's default (same draw as init: default)
        torch.testing.assert_close(getattr(m, name).bias, getattr(plain, name).bias, rtol=0, atol=0)
    for bn in (m.bn0, m.bn1):
        assert bool((bn.weight == 1).all()) and bool((bn.bias == 0).all())


def test_new_arguments_at_their_defaults_build_the_same_module() -> None:
    """avd at stride 1, avd_first and bottleneck leave the module as before; init default is
    PyTorch's (timm's SplitAttn with the same sizes and seed gives the same weights)."""
    torch.manual_seed(0)
    ours = SplitAttention(64, stride=1, avd=True, avd_first=True)
    torch.manual_seed(0)
    timm = SplitAttn(64, 64, stride=1, groups=1, radix=2, rd_channels=16, norm_layer=nn.BatchNorm2d)
    assert ours.avd_layer is None
    assert ours.state_dict().keys() == timm.state_dict().keys()
    for key, value in timm.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)


def test_run_config_records_the_new_arguments() -> None:
    """A run trained before bn2 was absorbed (no ``bottleneck`` in its configuration) never has the
    id of one trained after: the arguments are recorded at their defaults too."""
    from stitch.runs import resolved_insertion

    resolved = resolved_insertion(
        {"module": "SplitAttention", "at": "c5.*.conv2", "mode": "replace", "args": {}}
    )
    new = {"bottleneck": "auto", "avd": False, "avd_first": False, "init": "default"}
    assert {k: resolved["args"][k] for k in new} == new

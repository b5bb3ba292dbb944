"""The timm attention layers wrapped by the zoo (ELA, Strip, GE, NonLocal, BAT, SK, Halo, Lambda, BoT):
timm's modules unchanged (state dicts and outputs of a plain timm build), parameter counts, the
conv-replacement shapes, one-line size and build refusals (a fixed-size module where inputs vary in
size: Mask R-CNN), SK in a ResNet bottleneck (bn2), and the GatherExcite workaround's canary.
The shape / gradient / state-dict contract of every entry is in tests/test_zoo.py."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

import pytest
import torch
from timm.layers import BatNonLocalAttn, GatherExcite, NonLocalAttn, SelectiveKernel
from timm.layers.bottleneck_attn import BottleneckAttn
from timm.layers.coord_attn import EfficientLocalAttn, StripAttn
from timm.layers.halo_attn import HaloAttn
from timm.layers.lambda_layer import LambdaLayer
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

import modules_zoo
from modules_zoo.feature_size import InputSizeError
from stitch.config.schema_model import NestedInsertionCfg
from stitch.errors import StitchingError
from stitch.surgery import Applied, Insertion, stitch

try:  # tests/ may or may not become a package
    from . import reference_impls as ref
except ImportError:
    import reference_impls as ref


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _build(name: str, probe: dict, args: dict | None = None) -> nn.Module:
    return modules_zoo.get(name).build(probe, args or {})


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


C = {"channels": 32, "in_channels": 32, "out_channels": 32, "stride": 1, "feat_size": (16, 16)}
# zoo name, zoo user args, the plain timm construction with the same sizes
PLAIN_TIMM: list[tuple[str, dict, Callable[[], nn.Module]]] = [
    ("ELA", {}, lambda: EfficientLocalAttn(32)),
    (
        "ELA",
        {"norm_groups": 16, "activation": False},
        lambda: EfficientLocalAttn(32, norm_layer=partial(nn.GroupNorm, 16), act_layer=nn.Identity),
    ),
    ("Strip", {}, lambda: StripAttn(32)),
    ("GE", {"use_mlp": False}, lambda: GatherExcite(32, use_mlp=False)),  # the one GE timm 1.0.31 builds
    ("NonLocal", {}, lambda: NonLocalAttn(32, rd_ratio=0.5, rd_divisor=1)),
    (
        "BAT",
        {"block_size": 8},
        lambda: BatNonLocalAttn(32, block_size=8, groups=4, rd_ratio=0.5, rd_divisor=1),
    ),
    ("SK", {}, lambda: SelectiveKernel(32, 32)),
    (
        "SK",
        {"groups": 8, "split_input": False, "rd_min": 32},
        lambda: SelectiveKernel(32, 32, groups=8, split_input=False, rd_channels=32),
    ),
    ("Halo", {}, lambda: HaloAttn(32, 32)),
    ("Lambda", {}, lambda: LambdaLayer(32)),
    ("Lambda", {"r": None}, lambda: LambdaLayer(32, feat_size=(16, 16), r=None)),
    ("BoT", {}, lambda: BottleneckAttn(32, 32, feat_size=(16, 16))),
]


@pytest.mark.parametrize(
    "name,args,plain", PLAIN_TIMM, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(PLAIN_TIMM)]
)
def test_wraps_timm_unchanged(name: str, args: dict, plain: Callable[[], nn.Module]) -> None:
    ours, theirs = ref.perturbed(_build(name, C, args), 0.1), plain()
    assert isinstance(ours, type(theirs))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.double().eval(), theirs.double().eval()
    x = torch.randn(2, 32, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


C256 = {"channels": 256, "in_channels": 256, "out_channels": 256, "stride": 1, "feat_size": (14, 14)}


@pytest.mark.parametrize(
    "name,args,count",
    [
        ("ELA", {}, 4_608),  # 2 * 7C conv + 2 * 2C norm
        ("Strip", {}, 1_536),
        ("SK", {}, 603_168),
        ("GE", {}, 8_464),  # 256 * 16 + 16 + 16 * 256 + 256
        ("GE", {"extent": 8, "extra_params": True}, 16_912),  # GE-theta-plus
        ("GE", {"extent": 8, "extra_params": True, "use_mlp": False}, 8_448),  # GE-theta
        ("NonLocal", {}, 3 * (256 * 128 + 128) + 128 * 256 + 256 + 2 * 256),  # official: inter = C / 2
        ("NonLocal", {"rd_ratio": 1 / 8, "rd_divisor": 8}, 33_632),  # timm's default sizes
        ("BAT", {"groups": 2, "rd_ratio": 0.25, "rd_divisor": 8}, 40_704),  # timm's default sizes
        ("Halo", {}, 198_336),
        ("Lambda", {}, 38_432),
        ("Lambda", {"r": None}, 48_784),
        ("BoT", {}, 200_064),
    ],
)
def test_parameter_counts_at_256_channels(name: str, args: dict, count: int) -> None:
    assert _count(_build(name, C256, args)) == count


def test_non_local_defaults_match_the_official_nlnet_parameter_count() -> None:
    """The official NLNet (BAT repo): 5 blocks, after blocks 1, 3 of layer2 and 1, 3, 5 of layer3."""
    widths = [512, 512, 1024, 1024, 1024]
    assert sum(_count(_build("NonLocal", {"channels": c})) for c in widths) == 7_358_464
    # BAT with the official sizes: the official blocks have 2C + 4 more (conv biases timm leaves out)
    bat = sum(_count(_build("BAT", {"channels": c})) for c in widths)
    assert bat == 4_668_976 == 4_677_188 - sum(2 * c + 4 for c in widths)


@pytest.mark.parametrize("name,out", [("SK", 128), ("Halo", 128), ("BoT", 128), ("Lambda", 64)])
def test_conv_replacement_shapes(name: str, out: int) -> None:
    m = _build(name, {"in_channels": 64, "out_channels": out, "stride": 2, "feat_size": (16, 16)})
    assert m(torch.randn(2, 64, 16, 16)).shape == (2, out, 8, 8)


@pytest.mark.parametrize(
    "name,args,shape,message",
    [
        ("BAT", {}, (2, 32, 16, 16), "BAT: 16x16 input, but H and W must be multiples of block_size=7; "),
        ("Halo", {}, (2, 32, 12, 12), "Halo: 12x12 input, but H and W must be multiples of block_size=8; "),
        ("BoT", {}, (2, 32, 12, 12), "BoT was built for 16x16 inputs (the probe's) and got 12x12: "),
        (
            "Lambda",
            {"r": None},
            (2, 32, 12, 16),
            "Lambda (r: null) was built for 16x16 inputs (the probe's) and ",
        ),
        (
            "GE",
            {"extra_params": True},
            (2, 32, 16, 12),
            "GE (global extent, extra_params) was built for 16x16 ",
        ),
    ],
)
def test_input_size_refused_in_one_line(name: str, args: dict, shape: tuple, message: str) -> None:
    m = _build(name, C, args)
    with pytest.raises(InputSizeError, match=re.escape(message)) as info:
        m(torch.randn(shape))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name,probe,args,message",
    [
        (
            "Lambda",
            {"in_channels": 64, "out_channels": 128},
            {},
            "Lambda keeps the channel count (timm reshapes",
        ),
        ("Lambda", C, {"r": 4}, "Lambda: r must be an odd size or null"),
        ("Halo", {"in_channels": 32, "out_channels": 36}, {}, "Halo: num_heads=8 must divide the 36 output"),
        ("BoT", dict(C, stride=3), {}, "BoT: stride must be 1 or 2, got 3"),
        ("BoT", {"in_channels": 32}, {}, "BoT needs feat_size (H, W), the one input size it takes"),
        ("BAT", C, {"groups": 3}, "BAT: groups=3 must divide the reduced width 16"),
        ("SK", {"in_channels": 33}, {}, "SK: split_input needs in_channels (33) divisible by the 2 paths"),
        ("GE", {"channels": 32}, {"extent": 3}, "extent must be 0 (global) or an even number"),
        ("GE", {"channels": 32}, {"extent": 6, "extra_params": True}, "the extent must be a power of two"),
        ("ELA", C, {"norm_groups": 0}, "norm_groups must be >= 1"),
    ],
)
def test_build_refused_in_one_line(name: str, probe: dict, args: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _build(name, probe, args)


def test_non_local_is_the_identity_at_init() -> None:
    m = _build("NonLocal", {"channels": 32}).eval()
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        assert torch.equal(m(x), x)


def test_modes() -> None:
    for name in ("NonLocal", "BAT"):  # own shortcut: residual would add x twice
        assert modules_zoo.get(name).modes == ("after", "before", "replace")
    for name in ("SK", "Halo", "Lambda", "BoT"):
        assert modules_zoo.get(name).modes[0] == "replace"
    for name in ("ELA", "Strip", "GE"):
        assert modules_zoo.get(name).modes == ("after", "before", "residual", "replace")


def test_gather_excite_timm_bug_canary() -> None:
    """timm 1.0.31's GatherExcite cannot build with its MLP. When this fails, timm is fixed:
    remove RepairedGatherExcite's workaround (modules_zoo/timm_gates.py)."""
    with pytest.raises(TypeError, match="multiple values for argument 'act_layer'"):
        GatherExcite(32)


def test_gather_excite_workaround_builds_every_variant() -> None:
    m = _build("GE", C, {"extent": 4, "extra_params": True})
    norms = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert len(norms) == 2 and all(b.eps == 1e-5 and b.momentum == 0.1 for b in norms)
    assert sorted(m.state_dict()) == sorted(
        [f"gather.{c}.weight" for c in ("conv1", "conv2")]
        + [
            f"gather.norm{i}.{k}"
            for i in (1, 2)
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ]
        + [f"mlp.{f}.{k}" for f in ("fc1", "fc2") for k in ("weight", "bias")]
    )
    m.train()(torch.randn(2, 32, 16, 16)).sum().backward()
    assert m.gather.conv1.weight.grad is not None  # type: ignore[union-attr]
    # the patch is undone after building
    import timm.layers.gather_excite as timm_ge
    from timm.layers.mlp import ConvMlp

    assert timm_ge.ConvMlp is ConvMlp


@pytest.mark.parametrize(
    "args,size",
    [
        ({"extent": 4, "extra_params": True}, (12, 20)),  # GE-θ+ (MLP)
        ({"extent": 4, "extra_params": True, "use_mlp": False}, (12, 20)),  # GE-θ
        ({"extent": 2, "extra_params": True}, (9, 7)),
        ({"extra_params": True}, (8, 6)),  # global extent: the probe's size only
    ],
    ids=["theta-plus-extent4", "theta-extent4", "theta-plus-extent2", "theta-plus-global"],
)
def test_gather_excite_workaround_equals_the_transcription(args: dict, size: tuple[int, int]) -> None:
    m = ref.perturbed(_build("GE", {**C, "feat_size": size}, args), 0.3).double().eval()
    x = torch.randn(2, 32, *size, dtype=torch.float64)
    expected = ref.gather_excite_forward(m.state_dict(), x, args.get("extent", 0))
    torch.testing.assert_close(m(x), expected, rtol=0, atol=1e-12)


def _two_convs() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1))


def _stitch(model: nn.Module, size: int, module: str, at: str = "2") -> None:
    x = torch.randn(2, 3, size, size)
    stitch(model, {}, lambda m: m(x), [Insertion("A", NestedInsertionCfg(module=module, at=at))])


def test_stitched_at_a_point_the_probe_sizes() -> None:
    """replace (the default) of a stride-2 conv: SK, Halo and BoT take its stride, BoT the probe's size."""
    for name in ("SK", "Halo", "BoT", "Lambda"):
        model = _two_convs()
        _stitch(model, 16, name)
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 32, 8, 8)
    assert model[2].__class__.__name__ == "CheckedLambdaLayer"


@pytest.mark.parametrize(
    "module,at,size,message",
    [
        ("Halo", "2", 12, "Halo: 12x12 input, but H and W must be multiples of block_size=8"),
        ("BAT", "1", 16, "BAT: 16x16 input, but H and W must be multiples of block_size=7"),
    ],
)
def test_stitching_refuses_a_size_in_one_line(module: str, at: str, size: int, message: str) -> None:
    with pytest.raises(StitchingError, match=re.escape(message)) as info:
        _stitch(_two_convs(), size, module, at)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- inputs that vary in size
FIXED_SIZE = [
    (
        "BoT",
        {},
        "BoT takes one fixed input size (the probe's 16x16); ",
        "use Lambda (r: 9) (Halo only where its block_size divides 32 / stride: block 8 at stride 4) or",
    ),
    (
        "Lambda",
        {"r": None},
        "Lambda (r: null) takes one fixed input size (the probe's 16x16); ",
        "use Lambda with r: 9 or",
    ),
    (
        "GE",
        {"extra_params": True},
        "GE (global extent, extra_params) takes one fixed input size (the probe's 8x8); ",
        "use GE with extent 2, 4 or 8 (or extra_params: false) or",
    ),
]


def _stitch_varying(module: str, args: dict, inputs_vary: bool) -> nn.Module:
    model = _two_convs()
    x = torch.randn(2, 3, 16, 16)
    cfg = NestedInsertionCfg(module=module, at="2", args=args)
    stitch(model, {}, lambda m: m(x), [Insertion("A", cfg)], inputs_vary=inputs_vary)
    return model


@pytest.mark.parametrize("module,args,message,fix", FIXED_SIZE, ids=["BoT", "Lambda-r-null", "GE-global"])
def test_fixed_size_module_refused_where_inputs_vary(module: str, args: dict, message: str, fix: str) -> None:
    with pytest.raises(StitchingError) as info:
        _stitch_varying(module, args, inputs_vary=True)
    text = str(info.value)
    assert "\n" not in text and f"insertion 'A' at '2': {message}" in text
    assert "this task's inputs vary in size (Mask R-CNN resizes every image): " + fix in text
    assert text.endswith(" a fixed-size task")
    _stitch_varying(module, args, inputs_vary=False)  # one input size: built for the probe's


@pytest.mark.parametrize(
    "module,args",
    [
        ("Lambda", {}),
        ("Lambda", {"r": 3}),
        ("GE", {"extra_params": True, "extent": 2}),
        ("GE", {}),
    ],
)
def test_size_free_settings_stitch_where_inputs_vary(module: str, args: dict) -> None:
    """These settings take any size (Halo and BAT need block multiples: tested in Mask R-CNN below)."""
    model = _stitch_varying(module, args, inputs_vary=True)
    assert model(torch.randn(2, 3, 32, 48)).shape == (2, 32, 16, 24)  # another size works


def _tiny_mask_rcnn(write_experiment, insertions: str):
    """A tiny MobileNetV3 Mask R-CNN experiment: images resized to a short side of 64 (long side
    at most 96) and padded to multiples of 32; the probe's 64x64 gives c2 16x16 (stride 4) and c4
    4x4 (stride 16)."""
    from stitch.config import load_experiment

    return load_experiment(
        write_experiment(
            """
            name: blocks
            task: instance
            baseline:
              model: maskrcnn
              args: {backbone: mobilenet_v3_small, min_size: 64, max_size: 96, num_classes: 3}
            probe: {image_size: [64, 64]}
            insertions:
            """
            + insertions
        )
    )


@pytest.mark.parametrize(
    "insertion,message",
    [
        (
            "{name: H, module: Halo, at: c4, mode: after}",
            "insertion 'H' at 'c4': Halo needs H and W multiples of block_size=8, but this task's inputs "
            "vary in size (Mask R-CNN pads every batch to a multiple of 32): at this point (the probe's "
            "4x4) they are only sure to be multiples of 2; use a block_size that divides 2, a point of "
            "stride 4 or finer, or another module",
        ),
        (
            "{name: B, module: BAT, at: c2}",
            "insertion 'B' at 'c2': BAT needs H and W multiples of block_size=7, but this task's inputs "
            "vary in size (Mask R-CNN pads every batch to a multiple of 32): at this point (the probe's "
            "16x16) they are only sure to be multiples of 8; use a block_size that divides 8, or another "
            "module",
        ),
    ],
    ids=["Halo-c4", "BAT-c2"],
)
def test_block_size_modules_refused_where_padding_does_not_keep_the_multiple(
    write_experiment, insertion: str, message: str
) -> None:
    from stitch.build import build_model
    from stitch.errors import StitchError

    with pytest.raises(StitchError) as info:
        build_model(_tiny_mask_rcnn(write_experiment, f"  - {insertion}\n"))
    assert "\n" not in str(info.value) and message in str(info.value)


def test_block_size_modules_stitch_where_padding_keeps_the_multiple(write_experiment) -> None:
    """Halo's block 8 at stride 4 (c2), BAT's block 4 there, Halo's block 2 at stride 16 (c4): every
    padded batch fits, including images of other sizes and aspect ratios than the probe's."""
    from stitch.build import build_model

    exp = _tiny_mask_rcnn(
        write_experiment,
        """
              - {name: H, module: Halo, at: c2, mode: after}
              - {name: B, module: BAT, at: c2, args: {block_size: 4}}
              - {name: H2, module: Halo, at: c4, mode: after, args: {block_size: 2}}
            """,
    )
    model = build_model(exp).eval()
    with torch.no_grad():  # 40x96 is padded to 64x96: c2 16x24, c4 4x6 (not multiples of 8)
        out = model([torch.rand(3, 40, 96), torch.rand(3, 64, 50)])
    assert len(out) == 2
    kinds = [type(m).__name__ for m in model.modules()]
    assert kinds.count("CheckedHaloAttn") == 2 and kinds.count("CheckedBatNonLocalAttn") == 1


def test_inputs_vary_for_the_instance_task_only() -> None:
    from stitch.baselines.maskrcnn import MASKRCNN
    from stitch.build import inputs_vary
    from stitch.registry import BASELINES

    assert inputs_vary(MASKRCNN)
    assert not inputs_vary(BASELINES["unet"])  # segmentation: data.image_size crops only


def test_validate_refuses_bot_in_mask_rcnn_in_one_line(write_experiment, capsys) -> None:
    from stitch.cli import main

    path = write_experiment("""
        name: bot
        task: instance
        baseline:
          model: maskrcnn
          args: {backbone: mobilenet_v3_small, min_size: 64, max_size: 64, num_classes: 3}
        probe: {image_size: [64, 64]}
        insertions:
          - {name: B, module: BoT, at: c4, mode: after}
    """)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and "insertions[0].at: insertion 'B' at 'c4': " in err
    assert (
        "BoT takes one fixed input size (the probe's 4x4); this task's inputs vary in size (Mask R-CNN "
        "resizes every image): use Lambda (r: 9) (Halo only where its block_size divides 32 / stride: "
        "block 8 at stride 4) or a fixed-size task"
    ) in err


# ----------------------------------------------------------------------------- SK in a ResNet bottleneck
def _sk_block() -> Bottleneck:
    ds = nn.Sequential(nn.Conv2d(32, 64, 1, 2, bias=False), nn.BatchNorm2d(64))
    return Bottleneck(32, 16, 2, ds)


def _stitch_sk(block: nn.Module, args: dict, mode: str = "replace") -> Applied:
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    cfg = NestedInsertionCfg(module="SK", at="conv2", mode=mode, args=args)
    (applied,) = stitch(block, {}, lambda m: m(x), [Insertion("SK", cfg)])
    return applied


def test_sk_bottleneck_auto_absorbs_bn2_false_keeps_it() -> None:
    block = _sk_block()
    applied = _stitch_sk(block, {})
    assert (
        isinstance(block.bn2, nn.Identity) and applied.absorbed == ["bn2"] and applied.absorbed_params == 32
    )
    kept = _sk_block()
    applied = _stitch_sk(kept, {"bottleneck": False})
    assert isinstance(kept.bn2, nn.BatchNorm2d) and applied.absorbed == [] and applied.absorbed_params == 0
    assert isinstance(kept.conv2, SelectiveKernel)
    assert kept(torch.randn(2, 32, 8, 8)).shape == (2, 64, 4, 4)


def test_sk_bottleneck_auto_absorbs_only_when_replacing_a_bottleneck_conv2() -> None:
    block = _sk_block()
    assert _stitch_sk(block, {}, mode="after").absorbed == []
    assert isinstance(block.bn2, nn.BatchNorm2d)
    basic = BasicBlock(16, 16)
    assert _stitch_sk(basic, {}).absorbed == [] and isinstance(basic.bn2, nn.BatchNorm2d)


def test_sk_at_every_resnext50_conv2_absorbs_bn2_as_sknet50() -> None:
    """SKNet-50 (Li et al., CVPR 2019, Table: 27.5M) through the harness: SK with the paper's sizes
    at every conv2 of torchvision's ResNeXt-50 32x4d takes over each bn2 (SKNet has no norm after
    the SK conv)."""
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnext50_32x4d()
    assert sum(p.numel() for p in net.parameters()) == 25_028_904
    x = torch.randn(1, 3, 32, 32)  # a small probe: only the shapes matter here
    args = {"groups": 32, "split_input": False, "rd_min": 32}
    cfg = NestedInsertionCfg(module="SK", at="layer*.*.conv2", args=args)
    with torch.no_grad():
        applied = stitch(net, {}, lambda m: m(x), [Insertion("SK", cfg)])
    assert len(applied) == 16 and all(a.absorbed == [a.point.replace("conv2", "bn2")] for a in applied)
    assert all(isinstance(block.bn2, nn.Identity) for layer in (net.layer1, net.layer4) for block in layer)
    assert sum(p.numel() for p in net.parameters()) == 27_479_784
    assert sum(a.delta for a in applied) == 27_479_784 - 25_028_904


def test_sk_bottleneck_true_elsewhere_and_bad_values_are_one_line_errors() -> None:
    with pytest.raises(StitchingError) as info:
        _stitch_sk(BasicBlock(16, 16), {"bottleneck": True})
    assert "\n" not in str(info.value)
    assert (
        "bottleneck: true needs mode replace at the conv2 of a torchvision ResNet Bottleneck "
        "(this point is 'conv2' in a BasicBlock, mode replace); use bottleneck: auto or false here"
    ) in str(info.value)
    with pytest.raises(StitchingError, match="SK: argument 'bottleneck'='sometimes': "):
        _stitch_sk(_sk_block(), {"bottleneck": "sometimes"})
    with pytest.raises(ValueError, match="bottleneck must be auto, true or false, not 'sometimes'"):
        _build("SK", {"in_channels": 16}, {"bottleneck": "sometimes"})
    assert _stitch_sk(_sk_block(), {"bottleneck": True}).absorbed == ["bn2"]

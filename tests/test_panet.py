"""PANet zoo modules: stitched into torchvision's Mask R-CNN, fidelity to the official code
(github.com/ShuLiu1993/PANet, transcribed in ``reference_impls``), behaviour, the absorb mechanism."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

import modules_zoo
from modules_zoo.panet import PAFPN, AdaptiveFeaturePooling, BottomUpPath, FullyConnectedFusion
from modules_zoo.panet.pooling import HeadTower, shared_convs
from stitch.baselines.maskrcnn import MASKRCNN, build_maskrcnn, maskrcnn_aliases
from stitch.build import stitch_variant
from stitch.config import NestedInsertionCfg, load_experiment
from stitch.errors import ConfigError, StitchingError
from stitch.surgery import Insertion, count_params, stitch

try:  # tests/ may or may not become a package
    from . import reference_impls as ref
except ImportError:
    import reference_impls as ref

PANET = ("PAFPN", "BottomUpPath", "AdaptiveFeaturePooling", "FullyConnectedFusion")
SIZE = 64
R50_LEVELS = [256, 512, 1024, 2048]  # ResNet-50 C2..C5
COCO_CLASSES = 81  # official Detectron COCO configs (80 + background)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def experiment(write_experiment, insertions: str, image: int = SIZE):
    return load_experiment(
        write_experiment(f"""
        name: panet
        task: instance
        baseline:
          model: maskrcnn
          args: {{backbone: resnet18, min_size: {image}, max_size: {image}, num_classes: 3}}
        probe: {{image_size: [{image}, {image}]}}
        insertions:
        {insertions}
    """)
    )


def lighten(model: nn.Module) -> nn.Module:
    """Fewer RoIs per image after stitching (CPU time; the 2fc AFP runs 4 x 12.8M-weight fcs)."""
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    model.rpn._post_nms_top_n = {"training": 200, "testing": 100}
    return model


def batch(n: int = 1):
    return MASKRCNN.example_batch({"num_classes": 3}, n, (SIZE, SIZE))


def copy_params(dst: nn.Module, src: nn.Module) -> None:
    """Copy ``src``'s parameters into ``dst`` in order (same layer types and order, shapes checked)."""
    dp, sp = list(dst.parameters()), list(src.parameters())
    assert [p.shape for p in dp] == [p.shape for p in sp]
    with torch.no_grad():
        for d, s in zip(dp, sp):
            d.copy_(s)


def levels(
    channels=(256, 256, 256, 256), size: int = 32, batch: int = 2, dtype=torch.float32
) -> dict[str, torch.Tensor]:
    return {str(i): torch.randn(batch, c, size >> i, size >> i, dtype=dtype) for i, c in enumerate(channels)}


# ------------------------------------------------------------------------------------------------
# registry / CLI
# ------------------------------------------------------------------------------------------------
def test_stitch_zoo_lists_the_panet_modules(capsys) -> None:
    from stitch.cli import main

    assert main(["zoo", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert {n: entries[n]["kind"] for n in PANET} == {
        "PAFPN": "neck",
        "BottomUpPath": "neck",
        "AdaptiveFeaturePooling": "roi_head",
        "FullyConnectedFusion": "roi_head",
    }
    for name in PANET:
        assert "1803.01534" in entries[name]["reference"] and "ShuLiu1993/PANet" in entries[name]["reference"]
        first_argument = next(a["name"] for a in entries[name]["arguments"])
        assert first_argument == "norm"  # site-derived arguments are not user settings
    assert "site_norm" in entries["AdaptiveFeaturePooling"]["probe_arguments"]


# ------------------------------------------------------------------------------------------------
# stitched into Mask R-CNN: trains, evaluates, keeps torchvision's interfaces
# ------------------------------------------------------------------------------------------------
STITCHES = {
    "PAFPN": "- {name: PA, module: PAFPN, at: fpn}",
    "BottomUpPath": "- {name: BU, module: BottomUpPath, at: fpn}",  # its one mode, after, is the default
    "AFP-box": "- {name: AFP, module: AdaptiveFeaturePooling, at: box_roi_pool}",
    "AFP-mask-gn": "- {name: AFPm, module: AdaptiveFeaturePooling, at: mask_roi_pool, args: {norm: gn}}",
    "FF-gn": "- {name: FF, module: FullyConnectedFusion, at: mask_head, args: {norm: gn}}",
    "all": """- {name: PA, module: PAFPN, at: fpn, args: {norm: gn}}
        - {name: AFPm, module: AdaptiveFeaturePooling, at: mask_roi_pool}
        - {name: FF, module: FullyConnectedFusion, at: mask_head}
        - {name: AFP, module: AdaptiveFeaturePooling, at: box_roi_pool}""",
}


@pytest.mark.parametrize("which", list(STITCHES))
def test_stitched_maskrcnn_trains_and_evaluates(write_experiment, which: str) -> None:
    built = stitch_variant(experiment(write_experiment, STITCHES[which]))
    model = lighten(built.model)
    assert built.delta == sum(a.delta for a in built.applied)
    data = batch()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    for _ in range(2):
        loss = MASKRCNN.loss(model, data)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        for a in built.applied:  # the stitched module is used: its parameters get gradients
            new = model.get_submodule(a.point)
            assert all(p.grad is not None for p in new.parameters()), a.insertion
        opt.step()
    model.eval()
    with torch.no_grad():
        (out,) = model([data["images"][0]])
    assert set(out) >= {"boxes", "labels", "scores", "masks"}
    assert out["masks"].shape[1:] == (1, SIZE, SIZE) and len(out["boxes"]) == len(out["masks"])


def test_all_three_survive_zero_detections_deepcopy_and_state_dict(write_experiment) -> None:
    exp = experiment(write_experiment, STITCHES["all"])
    model = lighten(stitch_variant(exp, seed=0).model).eval()
    image = batch()["images"][0]
    model.roi_heads.score_thresh = 1.01  # no detection survives: the mask branch runs on 0 RoIs
    with torch.no_grad():
        (out,) = model([image])
    assert len(out["boxes"]) == 0 and out["masks"].shape == (0, 1, SIZE, SIZE)
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        ref_out = model([image])[0]
        assert torch.equal(copy.deepcopy(model)([image])[0]["masks"], ref_out["masks"])
        other = ref.perturbed(copy.deepcopy(model), 0.5, bn_stats=False)
        assert not torch.equal(other([image])[0]["scores"], ref_out["scores"])
        other.load_state_dict(model.state_dict())
        torch.testing.assert_close(other([image])[0]["masks"], ref_out["masks"])


def test_frozen_bn_backbone_and_v2_style_conv_heads_take_afp_and_ff() -> None:
    """torchvision v2's heads (FastRCNNConvFCHead, MaskRCNNHeads with BatchNorm): AFP fuses after the
    first conv of each and copies its norm ('auto'); FF takes the BatchNorm too."""
    torch.manual_seed(0)
    model = build_maskrcnn(
        backbone="resnet18", num_classes=3, min_size=SIZE, max_size=SIZE
    )  # FrozenBatchNorm2d body
    rh = model.roi_heads
    rh.box_head = FastRCNNConvFCHead((256, 7, 7), [256, 256, 256, 256], [1024], norm_layer=nn.BatchNorm2d)
    rh.box_predictor = FastRCNNPredictor(1024, 3)
    rh.mask_head = MaskRCNNHeads(256, [256, 256, 256, 256], 1, norm_layer=nn.BatchNorm2d)
    before = count_params(model)
    data = batch()
    lighten(model)
    ins = [
        Insertion("AFP", NestedInsertionCfg(module="AdaptiveFeaturePooling", at="box_roi_pool")),
        Insertion("AFPm", NestedInsertionCfg(module="AdaptiveFeaturePooling", at="mask_roi_pool")),
        Insertion("FF", NestedInsertionCfg(module="FullyConnectedFusion", at="mask_head")),
    ]
    applied = stitch(model, maskrcnn_aliases(model), lambda m: MASKRCNN.run(m, data), ins)
    assert count_params(model) - before == sum(a.delta for a in applied)
    assert isinstance(rh.box_head[0], nn.Identity) and isinstance(rh.mask_head, FullyConnectedFusion)
    assert isinstance(rh.mask_head[0] if False else getattr(rh.mask_head, "0"), nn.Identity)
    assert isinstance(rh.box_roi_pool.levels[0][1], nn.BatchNorm2d) and isinstance(
        rh.mask_head.conv5_fc[1], nn.BatchNorm2d
    )
    loss = MASKRCNN.loss(model, data)
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        assert "masks" in model(data["images"])[0]


def _v2_style_heads(model: nn.Module) -> nn.Module:
    rh = model.roi_heads
    rh.box_head = FastRCNNConvFCHead((256, 7, 7), [256, 256, 256, 256], [1024], norm_layer=nn.BatchNorm2d)
    rh.box_predictor = FastRCNNPredictor(1024, 3)
    rh.mask_head = MaskRCNNHeads(256, [256, 256, 256, 256], 1, norm_layer=nn.BatchNorm2d)
    return model


def test_afp_takes_the_conv_tower_and_keeps_its_blocks_under_norm_auto() -> None:
    """Official roi_Xconv1fc_gn_head_panet / mask head: conv1 per level, then the shared convs. AFP
    absorbs the whole conv tower of torchvision's conv heads; with norm 'auto' the shared convs are
    the head's own blocks (weights and BatchNorm kept: the model computes what it did before)."""
    model = lighten(
        _v2_style_heads(build_maskrcnn(backbone="resnet18", num_classes=3, min_size=SIZE, max_size=SIZE))
    )
    before = count_params(model)
    rh = model.roi_heads
    original = {"box": copy.deepcopy(rh.box_head), "mask": copy.deepcopy(rh.mask_head)}
    data = batch()
    ins = [
        Insertion("AFP", NestedInsertionCfg(module="AdaptiveFeaturePooling", at=at))
        for at in ("box_roi_pool", "mask_roi_pool")
    ]
    applied = stitch(model, maskrcnn_aliases(model), lambda m: MASKRCNN.run(m, data), ins)
    assert [a.absorbed for a in applied] == [
        [f"roi_heads.{b}_head.{i}" for i in range(4)] for b in ("box", "mask")
    ]
    for branch in ("box", "mask"):
        head, afp = getattr(rh, f"{branch}_head"), getattr(rh, f"{branch}_roi_pool")
        assert all(isinstance(head[i], nn.Identity) for i in range(4))
        want = nn.Sequential(*list(original[branch])[1:4]).state_dict()
        got = afp.shared.state_dict()
        assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
        assert isinstance(afp.levels[0][1], nn.BatchNorm2d)
    assert count_params(model) - before == sum(a.delta for a in applied)


@pytest.mark.parametrize("norm", ["gn", "none"])
def test_afp_rebuilds_the_shared_convs_for_another_norm(norm: str) -> None:
    """A conv tower with BatchNorm under norm 'gn' ('none'): new Conv(bias=False) -> GroupNorm(32) ->
    ReLU (Conv(bias) -> ReLU) blocks of the same shapes, MSRAFill, bias 0 (official head convs)."""
    tower = HeadTower(tuple(MaskRCNNHeads(64, [64, 64, 64], 2, norm_layer=nn.BatchNorm2d)))
    new = shared_convs(tower, norm)
    assert len(new) == 3 and shared_convs(None, norm) == []
    for block, old in zip(new, tower.blocks):
        conv = block[0]
        assert (conv.in_channels, conv.out_channels, conv.dilation) == (64, 64, (2, 2)) and block[-1].inplace
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.1)
        assert not torch.equal(conv.weight, old[0].weight)
        if norm == "gn":
            assert conv.bias is None and isinstance(block[1], nn.GroupNorm) and block[1].num_groups == 32
        else:
            assert len(block) == 2 and torch.equal(conv.bias, torch.zeros(64))
    kept = shared_convs(tower, "bn")  # the same norm: copies of the blocks themselves
    assert all(torch.equal(a[0].weight, b[0].weight) and a is not b for a, b in zip(kept, tower.blocks))
    assert repr(tower) == "HeadTower(3 conv blocks, norm bn)"


NORMS = (nn.GroupNorm, nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)


def test_norm_gn_gives_the_official_gn_configuration_end_to_end(write_experiment) -> None:
    """ResNet-50-FPN v2 (BatchNorm FPN and heads, 4conv1fc box head) with `norm: gn` on every PANet
    piece: every norm layer in the neck and the box and mask branches is GroupNorm(32), as in the
    official PANet GN configs (built and probed only)."""
    exp = load_experiment(
        write_experiment(f"""
        name: panet_gn
        task: instance
        baseline:
          model: maskrcnn
          args: {{backbone: resnet50, version: 2, min_size: {SIZE}, max_size: {SIZE}, num_classes: 3}}
        probe: {{image_size: [{SIZE}, {SIZE}]}}
        insertions:
          - {{name: BPA, module: PAFPN, at: fpn, args: {{norm: gn}}}}
          - {{name: AFP, module: AdaptiveFeaturePooling, at: [box_roi_pool, mask_roi_pool], args: {{norm: gn}}}}
          - {{name: FF, module: FullyConnectedFusion, at: mask_head, args: {{norm: gn}}}}
    """)
    )
    model = stitch_variant(exp).model
    rh = model.roi_heads
    parts = [model.backbone.fpn, rh.box_roi_pool, rh.box_head, rh.mask_roi_pool, rh.mask_head]
    norms = [m for part in parts for m in part.modules() if isinstance(m, NORMS)]
    assert len(norms) == 8 + 6 + 7 + 4 + 5  # FPN, bottom-up, box conv1 x4 + 3 shared, mask conv1 x4, FF
    assert all(isinstance(m, nn.GroupNorm) and m.num_groups == 32 for m in norms)
    assert len(rh.box_roi_pool.shared) == 3  # the official 3 shared convs after conv1
    assert not any(isinstance(m, NORMS) for m in rh.box_head.modules())  # only Flatten, fc, ReLU left


def test_stitch_validate_passes_on_the_panet_example_with_norm_gn_everywhere(capsys) -> None:
    """The README's advice: `args: {norm: gn}` on every PANet piece of experiments/maskrcnn_panet.yaml
    (the all-three variant, `ablation=none`, is the one where every piece is stitched)."""
    from stitch.cli import main

    path = Path(__file__).resolve().parents[1] / "experiments" / "maskrcnn_panet.yaml"
    gn = [f"insertions.{i}.args.norm=gn" for i in range(3)]
    assert main(["validate", str(path), *gn, "ablation=none"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "ok: 2 variants built" in out and "absorbs roi_heads.box_head.fc6, roi_heads.box_head.fc7" in out


# ------------------------------------------------------------------------------------------------
# fidelity: parameter counts at ResNet-50 widths vs the official layer definitions
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["gn", "none"])
def test_neck_parameter_counts_match_official(norm: str) -> None:
    official = ref.PanetOfficialFPN(R50_LEVELS[::-1], 256, use_gn=norm == "gn")
    pafpn = modules_zoo.get("PAFPN").build(
        {"in_channels_list": R50_LEVELS, "channels": 256, "site_norm": "none"}, {"norm": norm}
    )
    assert (
        count_params(pafpn) == ref.panet_param_count(official) == {"gn": 6_889_984, "none": 6_884_864}[norm]
    )
    bup = modules_zoo.get("BottomUpPath").build(
        {"channels": 256, "num_levels": 4, "site_norm": "none"}, {"norm": norm}
    )
    assert count_params(bup) == official.bottom_up_parameters() == {"gn": 3_543_552, "none": 3_540_480}[norm]


@pytest.mark.parametrize("norm", ["gn", "none"])
def test_box_afp_parameter_counts_match_official(norm: str) -> None:
    gn = norm == "gn"
    official = ref.PanetOfficialBoxHead(use_gn=gn)  # roi_Xconv1fc_gn_head_panet (4conv1fc)
    afp = modules_zoo.get("AdaptiveFeaturePooling").build(
        {
            "in_channels": 256,
            "width": 256,
            "first_layer": "conv",
            "featmap_names": list("0123"),
            "output_size": 7,
            "sampling_ratio": 2,
            "site_norm": "none",
            "dilation": 1,
        },
        {"norm": norm},
    )
    assert count_params(afp) == ref.panet_param_count(official, "conv1_head")
    # stitched: AFP + torchvision's 4conv1fc head with its first conv absorbed == the official head
    head = FastRCNNConvFCHead(
        (256, 7, 7), [256] * 4, [1024], norm_layer=(lambda c: nn.GroupNorm(32, c)) if gn else None
    )
    assert count_params(afp) + count_params(head) - count_params(head[0]) == ref.panet_param_count(official)


FC_SITE = {
    "in_channels": 256,
    "width": 1024,
    "first_layer": "fc",
    "featmap_names": list("0123"),
    "output_size": 7,
    "sampling_ratio": 2,
    "site_norm": "none",
    "dilation": 1,
}


@pytest.mark.parametrize("norm", ["gn", "none"])
def test_2fc_afp_parameter_count_and_init_match_official(norm: str) -> None:
    """roi_2mlp_head_gn_panet (commit dac8628, the released _det_2fc model): per-level fc1 =
    Linear -> GN -> ReLU, fc2 = Linear -> GN -> ReLU; AFP holds both (absorbing fc6 and fc7)."""
    with torch.device("meta"):  # counts only (initialised weights: below)
        stitched = TwoMLPHead(256 * 49, 1024)  # AFP + TwoMLPHead with fc6 and fc7 absorbed
        transcription = ref.PanetOfficial2MLPHead(use_gn=norm == "gn")
        afp = modules_zoo.get("AdaptiveFeaturePooling").build(FC_SITE, {"norm": norm})
    official = {"gn": 52_444_160, "none": 52_433_920}[norm]
    assert count_params(afp) == ref.panet_param_count(transcription) == official
    absorbed = count_params(stitched.fc6) + count_params(stitched.fc7)
    assert count_params(afp) + count_params(stitched) - absorbed == official
    if norm == "none":
        return
    # official _init_weights: every Linear XavierFill U(+-sqrt(3 / fan_in)), bias 0; GN 1, 0
    afp = modules_zoo.get("AdaptiveFeaturePooling").build(FC_SITE, {"norm": norm})
    for linear, fan_in in [(afp.levels[0][1], 256 * 49), (afp.levels[3][1], 256 * 49), (afp.shared[0], 1024)]:
        bound = math.sqrt(3 / fan_in)
        assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.99 * bound
        assert linear.weight.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.02)
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    for gn in (afp.levels[0][2], afp.shared[1]):
        assert isinstance(gn, nn.GroupNorm) and (gn.num_groups, gn.num_channels, gn.eps) == (32, 1024, 1e-5)
        assert torch.equal(gn.weight, torch.ones(1024)) and torch.equal(gn.bias, torch.zeros(1024))


def test_afp_rejects_batchnorm_for_an_fc_head() -> None:
    with pytest.raises(ValueError, match=re.escape("norm='bn': an fc first layer takes norm 'none' or 'gn'")):
        modules_zoo.get("AdaptiveFeaturePooling").build(
            dict(FC_SITE, width=64, in_channels=8), {"norm": "bn"}
        )


def test_bottom_up_convs_and_afp_convs_use_the_official_fills() -> None:
    """Official FPN._init_weights: bottom-up convs XavierFill, bias 0; head convs MSRAFill."""
    bup = BottomUpPath(256, norm="gn")
    for conv in [m for m in bup.modules() if isinstance(m, nn.Conv2d)]:
        bound = math.sqrt(3 / (256 * 9))
        assert conv.weight.abs().max() <= bound
        assert conv.weight.std().item() == pytest.approx(1 / math.sqrt(256 * 9), rel=0.02)
        assert torch.equal(conv.bias, torch.zeros(256))
    afp = AdaptiveFeaturePooling(256, 256, "conv", norm="gn")
    assert afp.levels[0][0].weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)


def test_init_pytorch_keeps_the_layer_defaults_and_run_configs_record_init() -> None:
    """`init: pytorch` is stitch before issue 16 (PyTorch's defaults: non-zero biases); `init` is
    recorded in run configurations, so runs trained before the official init get new ids (FF,
    unchanged, keeps its ids)."""
    from stitch.runs import resolved_insertion

    bup = BottomUpPath(16, norm="none", init="pytorch")
    assert bup.fuse[0][0].bias.abs().sum() > 0 and bup.fuse[0][0].weight.abs().max() <= 1 / math.sqrt(144)
    afp = AdaptiveFeaturePooling(8, 32, "fc", output_size=4, norm="gn", init="pytorch")
    assert afp.levels[0][1].bias.abs().sum() > 0 and afp.shared[0].bias.abs().sum() > 0
    with pytest.raises(ValueError, match="init must be 'official' or 'pytorch', not 'xavier'"):
        BottomUpPath(16, init="xavier")  # type: ignore[arg-type]
    for module in ("PAFPN", "BottomUpPath", "AdaptiveFeaturePooling"):
        assert resolved_insertion({"module": module, "at": "fpn", "args": {}})["args"]["init"] == "official"
    ff = resolved_insertion({"module": "FullyConnectedFusion", "at": "mask_head", "args": {}})
    assert ff["args"] == {"norm": "auto"}


def test_2fc_afp_output_equals_the_official_head() -> None:
    """Official roi_2mlp_head_gn_panet forward (HEAD) with copied weights == AFP, and == AFP followed
    by the stitched TwoMLPHead (fc6, fc7 now nn.Identity)."""
    official = ref.PanetOfficial2MLPHead(16, 64, 7, 4)
    official = ref.perturbed(official, 0.1, bn_stats=False).double().eval()  # random GN affine
    afp = AdaptiveFeaturePooling(16, 64, "fc", output_size=7, norm="gn").double().eval()
    copy_params(afp, official)
    feats, boxes, shapes = _afp_inputs()
    feats = {k: v.double() for k, v in feats.items()}
    boxes = [b.double() for b in boxes]
    head = TwoMLPHead(16 * 49, 64).double()
    head.fc6, head.fc7 = nn.Identity(), nn.Identity()
    with torch.no_grad():
        want = official(afp.pool(feats, boxes, shapes))
        got = afp(feats, boxes, shapes)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        torch.testing.assert_close(head(got), want, rtol=0, atol=1e-12)
    assert got.shape == (12, 64) and got.abs().sum() > 0


@pytest.mark.parametrize("norm", ["gn", "none"])
def test_mask_afp_and_ff_parameter_counts_match_official(norm: str) -> None:
    official = ref.PanetOfficialMaskHeadFF(
        COCO_CLASSES, use_gn=norm == "gn"
    )  # ..._gn_adp_ff + mask_rcnn_outputs
    afp = modules_zoo.get("AdaptiveFeaturePooling").build(
        {
            "in_channels": 256,
            "width": 256,
            "first_layer": "conv",
            "featmap_names": list("0123"),
            "output_size": 14,
            "sampling_ratio": 2,
            "site_norm": "none",
            "dilation": 1,
        },
        {"norm": norm},
    )
    ff = modules_zoo.get("FullyConnectedFusion").build(
        {
            "in_channels": 256,
            "num_classes": COCO_CLASSES,
            "roi_size": 14,
            "dim": 256,
            "num_convs": 4,
            "dilation": 1,
            "deconv_dim": 256,
            "site_norm": "none",
        },
        {"norm": norm},
    )
    assert count_params(afp) == ref.panet_param_count(official, "mask_conv1")
    # FF alone holds one conv1; with AFP stitched in front, that conv1 is absorbed
    assert count_params(afp) + count_params(ff) - count_params(getattr(ff, "0")) == ref.panet_param_count(
        official
    )
    assert count_params(ff.fc) == ref.panet_param_count(official, "mask_fc") == 128 * 14 * 14 * 784 + 784


# ------------------------------------------------------------------------------------------------
# fidelity: outputs vs the official forward with the same weights
# ------------------------------------------------------------------------------------------------
def _to_official_fpn(official: ref.PanetOfficialFPN, ours: PAFPN) -> None:
    fpn, n = ours.fpn, len(ours.fpn.inner_blocks)
    copy_params(official.conv_top, fpn.inner_blocks[n - 1])
    for j, lateral in enumerate(official.topdown_lateral_modules):
        copy_params(lateral.conv_lateral, fpn.inner_blocks[n - 2 - j])
    for j, post in enumerate(official.posthoc_modules):
        copy_params(post, fpn.layer_blocks[n - 1 - j])
    for j in range(n - 1):
        copy_params(official.panet_buttomup_conv1_modules[j], ours.bottom_up.downsample[j])
        copy_params(official.panet_buttomup_conv2_modules[j], ours.bottom_up.fuse[j])


@pytest.mark.parametrize("norm, relu", [("gn", True), ("none", False)])
def test_pafpn_and_bottom_up_outputs_equal_the_official_forward(norm: str, relu: bool) -> None:
    """The official GN code has ReLU in the bottom-up convs, its no-GN code has none."""
    channels = [16, 32, 64, 128]
    official = ref.PanetOfficialFPN(channels[::-1], 32, use_gn=norm == "gn").double().eval()
    ours = ref.perturbed(PAFPN(channels, 32, norm=norm, relu=relu), 0.05, bn_stats=False).double().eval()
    _to_official_fpn(official, ours)
    x = levels(channels, size=32, dtype=torch.float64)
    with torch.no_grad():
        out = ours(x)
        expected = official(list(x.values()))[::-1]  # official order is coarsest first
    assert list(out) == ["0", "1", "2", "3", "pool"]
    for got, want in zip(out.values(), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # the bottom-up path alone on the official FPN's P levels (official panet_buttomup=False)
    plain = (
        ref.PanetOfficialFPN(channels[::-1], 32, use_gn=norm == "gn", panet_buttomup=False).double().eval()
    )
    plain.load_state_dict({k: v for k, v in official.state_dict().items() if "buttomup" not in k})
    with torch.no_grad():
        p = plain(list(x.values()))[::-1]
        bup = ours.bottom_up(dict(zip(["0", "1", "2", "3", "pool"], p)))
    for got, want in zip(bup.values(), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _double_inputs(channels: int):
    feats, boxes, shapes = _afp_inputs(channels=channels)
    return {k: v.double() for k, v in feats.items()}, [b.double() for b in boxes], shapes


def test_conv_box_afp_output_equals_the_official_4conv1fc_head() -> None:
    """roi_Xconv1fc_gn_head_panet (HEAD) with copied weights == AFP (conv1 per level + the 3 shared
    convs it took from torchvision's FastRCNNConvFCHead) followed by what is left of that head."""
    official = ref.perturbed(ref.PanetOfficialBoxHead(64, 64, 32, 7), 0.1, bn_stats=False).double().eval()
    head = FastRCNNConvFCHead((64, 7, 7), [64] * 4, [32], norm_layer=lambda c: nn.GroupNorm(32, c)).double()
    afp = AdaptiveFeaturePooling(64, 64, "conv", norm="gn", shared=list(head)[1:4]).double().eval()
    for i in range(4):
        head[i] = nn.Identity()
    for i in range(4):
        copy_params(afp.levels[i], official.conv1_head[i])
    copy_params(afp.shared, official.convs)
    copy_params(head[5], official.fc)
    feats, boxes, shapes = _double_inputs(64)
    with torch.no_grad():
        want = official(afp.pool(feats, boxes, shapes))
        got = head.eval()(afp(feats, boxes, shapes))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert got.shape == (12, 32) and got.abs().sum() > 0


def test_mask_afp_and_ff_output_equal_the_official_ff_head() -> None:
    """mask_rcnn_fcn_head_v1upXconvs_gn_adp_ff + mask_rcnn_outputs (HEAD) with copied weights ==
    AFP at mask_roi_pool (conv1 per level) followed by FullyConnectedFusion (its conv1 absorbed)."""
    official = (
        ref.perturbed(ref.PanetOfficialMaskHeadFF(5, 64, 64, 6, 12), 0.1, bn_stats=False).double().eval()
    )
    afp = AdaptiveFeaturePooling(64, 64, "conv", output_size=6, norm="gn").double().eval()
    ff = FullyConnectedFusion(64, 5, roi_size=6, dim=64, norm="gn").double().eval()
    setattr(ff, "0", nn.Identity())
    for i in range(4):
        copy_params(afp.levels[i], official.mask_conv1[i])
    pairs = [("1", "conv_fcn.0"), ("2", "conv_fcn.1"), ("3", "mask_conv4"), ("conv4_fc", "mask_conv4_fc")]
    pairs += [("conv5_fc", "mask_conv5_fc"), ("fc", "mask_fc.0"), ("conv5_mask", "upconv")]
    for ours, theirs in [*pairs, ("mask_fcn_logits", "classify")]:
        copy_params(ff.get_submodule(ours), official.get_submodule(theirs))
    feats, boxes, shapes = _double_inputs(64)
    with torch.no_grad():
        want = official(afp.pool(feats, boxes, shapes))
        got = ff(afp(feats, boxes, shapes))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert got.shape == (12, 5, 12, 12) and got.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# behaviour
# ------------------------------------------------------------------------------------------------
def test_necks_keep_key_order_and_shapes_and_pool_from_n5() -> None:
    x = levels((8, 16, 32, 64), size=32)
    pafpn = PAFPN([8, 16, 32, 64], 32).eval()
    out = pafpn(x)
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape) for v in out.values()] == [
        (2, 32, 32, 32),
        (2, 32, 16, 16),
        (2, 32, 8, 8),
        (2, 32, 4, 4),
        (2, 32, 2, 2),
    ]
    torch.testing.assert_close(out["pool"], F.max_pool2d(out["3"], 1, 2))
    fpn_out = {**levels((32,) * 4, size=32)}
    fpn_out["pool"] = F.max_pool2d(fpn_out["3"], 1, 2)  # torchvision's LastLevelMaxPool: from P5
    bup = BottomUpPath(32).eval()
    with torch.no_grad():
        n = bup(fpn_out)
    assert list(n) == list(fpn_out) and all(n[k].shape == fpn_out[k].shape for k in n)
    assert torch.equal(n["0"], fpn_out["0"])  # N2 = P2
    torch.testing.assert_close(n["pool"], F.max_pool2d(n["3"], 1, 2))  # from N5, not P5
    assert not torch.allclose(n["pool"], fpn_out["pool"])


def _afp_inputs(n_rois: int = 6, channels: int = 16):
    feats = {
        **levels((channels,) * 4, size=32, batch=2),
        "pool": torch.randn(2, channels, 1, 1),
    }  # image 128x128: strides 4..32
    g = torch.Generator().manual_seed(3)
    boxes = []
    for _ in range(2):
        xy = torch.rand(n_rois, 2, generator=g) * 80
        wh = torch.rand(n_rois, 2, generator=g) * 40 + 4
        boxes.append(torch.cat([xy, xy + wh], 1))
    return feats, boxes, [(128, 128), (120, 128)]


@pytest.mark.parametrize("first_layer", ["conv", "fc"])
def test_afp_pools_every_roi_from_every_level_and_fuses_by_elementwise_max(first_layer: str) -> None:
    afp = AdaptiveFeaturePooling(16, 32, first_layer, output_size=7, norm="none").eval()
    ref.perturbed(afp, 0.1, bn_stats=False)
    feats, boxes, shapes = _afp_inputs()
    with torch.no_grad():
        out = afp(feats, boxes, shapes)
        per_level = [layer(x) for layer, x in zip(afp.levels, afp.pool(feats, boxes, shapes))]
        fused = torch.stack(per_level).amax(0)  # element-wise max over levels, then the shared layers
        assert torch.equal(out, afp.shared(fused))
        assert [type(m) for m in afp.shared] == ([nn.Linear, nn.ReLU] if first_layer == "fc" else [])
        winners = torch.stack(per_level).argmax(0)
        for k in feats:
            if k == "pool":
                continue
            zeroed = dict(feats, **{k: torch.zeros_like(feats[k])})
            changed = (afp(zeroed, boxes, shapes) != out).flatten(1).any(1)
            assert changed.all(), f"zeroing level {k} left some RoIs unchanged"
            assert (winners == int(k)).flatten(1).any(1).all()  # every level wins somewhere for every RoI
        assert torch.equal(
            afp(dict(feats, pool=torch.zeros(2, 16, 1, 1)), boxes, shapes), out
        )  # 'pool' is not used


def test_afp_pooling_matches_multiscale_roialign_on_the_assigned_level() -> None:
    afp = AdaptiveFeaturePooling(16, 8, "conv", norm="none")
    tv = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    feats, boxes, shapes = _afp_inputs(10)
    boxes = [b * 4 for b in boxes]  # spread RoIs over levels
    pooled = afp.pool(feats, boxes, shapes)
    expected = tv(feats, boxes, shapes)
    from torchvision.ops.poolers import _setup_scales

    _, mapper = _setup_scales([feats[k] for k in "0123"], shapes, 224, 4)
    level = mapper(boxes)
    for i, lvl in enumerate(level.tolist()):
        torch.testing.assert_close(pooled[lvl][i], expected[i])
    assert len(set(level.tolist())) > 1


def test_afp_and_ff_accept_zero_rois() -> None:
    feats, _, shapes = _afp_inputs()
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    for norm in ("gn", "none"):
        afp = AdaptiveFeaturePooling(16, 32, "conv", output_size=14, norm=norm).eval()
        assert afp(feats, empty, shapes).shape == (0, 32, 14, 14)
    afp_fc = AdaptiveFeaturePooling(16, 64, "fc", output_size=7, norm="gn").eval()
    assert afp_fc(feats, empty, shapes).shape == (0, 64)
    ff = FullyConnectedFusion(32, 5, roi_size=14, dim=64, norm="gn").eval()
    assert ff(torch.zeros(0, 32, 14, 14)).shape == (0, 5, 28, 28)


def test_ff_adds_the_same_fc_map_to_every_class() -> None:
    ff = ref.perturbed(FullyConnectedFusion(16, 5, roi_size=6, dim=64, norm="gn"), 0.1, bn_stats=False).eval()
    x = torch.randn(3, 16, 6, 6)
    with torch.no_grad():
        out = ff(x)
        h = x
        for i in range(3):
            h = getattr(ff, str(i))(h)
        ff_map = F.relu(ff.fc(ff.conv5_fc(ff.conv4_fc(h)).flatten(1))).view(3, 1, 12, 12)
        fcn = ff.mask_fcn_logits(F.relu(ff.conv5_mask(getattr(ff, "3")(h))))
    assert out.shape == (3, 5, 12, 12)
    diff = out - fcn
    torch.testing.assert_close(diff, ff_map.expand_as(diff))
    assert torch.equal(ff.fc_branch(h), ff_map)
    assert ff_map.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# the absorb mechanism and its errors
# ------------------------------------------------------------------------------------------------
def test_absorbed_layers_become_identity_and_their_params_count_as_removed(write_experiment) -> None:
    exp = experiment(write_experiment, STITCHES["all"])
    base = stitch_variant(exp, "baseline").model
    built = stitch_variant(exp)
    by = {a.insertion: a for a in built.applied}
    rh, base_rh = built.model.roi_heads, base.roi_heads
    assert isinstance(rh.box_head.fc6, nn.Identity) and isinstance(rh.mask_predictor, nn.Identity)
    assert isinstance(getattr(rh.mask_head, "0"), nn.Identity)
    assert isinstance(rh.box_head.fc7, nn.Identity)
    assert by["AFP"].absorbed == ["roi_heads.box_head.fc6", "roi_heads.box_head.fc7"]  # official fc1 + fc2
    assert by["AFP"].absorbed_params == count_params(base_rh.box_head)
    assert by["FF"].absorbed == ["roi_heads.mask_predictor"]
    assert by["FF"].absorbed_params == count_params(base_rh.mask_predictor)
    assert by["FF"].removed_params == count_params(base_rh.mask_head)
    assert by["AFPm"].absorbed == ["roi_heads.mask_head.0"]  # FF's conv1, stitched first
    assert by["AFPm"].absorbed_params == count_params(
        getattr(FullyConnectedFusion(256, 3, 14, norm="none"), "0")
    )
    for a in built.applied:
        assert a.delta == a.params + a.adapter_params - a.removed_params - a.absorbed_params
    assert (
        built.delta == count_params(built.model) - count_params(base) == sum(a.delta for a in built.applied)
    )
    assert "absorbs roi_heads.box_head.fc6, roi_heads.box_head.fc7" in by["AFP"].describe_absorbed()
    assert f"{by['AFP'].absorbed_params:,} params removed" in by["AFP"].describe_absorbed()
    assert by["PA"].describe_absorbed() == ""


@pytest.mark.parametrize(
    "insertions, cause",
    [
        (
            "- {name: A, module: AdaptiveFeaturePooling, at: box_head}",
            "AdaptiveFeaturePooling replaces a torchvision MultiScaleRoIAlign "
            "(box_roi_pool or mask_roi_pool), but this point is a TwoMLPHead; "
            "stitch it at box_roi_pool or mask_roi_pool",
        ),
        (
            "- {name: A, module: AdaptiveFeaturePooling, at: c5}",
            "but this point is a Sequential; stitch it at box_roi_pool",
        ),
        (
            "- {name: F, module: FullyConnectedFusion, at: box_head}",
            "FullyConnectedFusion replaces torchvision's MaskRCNNHeads (stitch it at mask_head)",
        ),
        (
            "- {name: B, module: BottomUpPath, at: fpn, mode: replace}",
            "BottomUpPath (neck) cannot be stitched with mode 'replace'; it takes: after",
        ),
        (
            "- {name: P, module: PAFPN, at: fpn, mode: after}",
            "PAFPN (neck) cannot be stitched with mode 'after'; it takes: replace",
        ),
        (
            "- {name: P, module: PAFPN, at: c4}",
            "PAFPN is a neck: it maps an ordered dict of feature maps to another",
        ),
        (
            """- {name: SE, module: SE, at: roi_heads.mask_head.0}
        - {name: A, module: AdaptiveFeaturePooling, at: mask_roi_pool}""",
            "AdaptiveFeaturePooling takes over 'roi_heads.mask_head.0', where insertion 'SE' is stitched; "
            "drop one of them",
        ),
        (
            """- {name: A, module: AdaptiveFeaturePooling, at: box_roi_pool}
        - {name: B, module: AdaptiveFeaturePooling, at: box_roi_pool}""",
            "this point is already replaced by insertion 'A'",
        ),
    ],
)
def test_stitching_errors_are_one_line_and_name_the_fix(
    write_experiment, insertions: str, cause: str
) -> None:
    exp = experiment(write_experiment, insertions)
    with pytest.raises(ConfigError, match=re.escape(cause)) as err:
        stitch_variant(exp)
    assert "\n" not in str(err.value)


def test_afp_rejects_a_head_it_does_not_support() -> None:
    model = build_maskrcnn(backbone="resnet18", num_classes=3, min_size=SIZE, max_size=SIZE)
    model.roi_heads.box_head = nn.Sequential(nn.Flatten(), nn.Linear(256 * 49, 1024), nn.ReLU())
    data = batch()
    ins = [Insertion("AFP", NestedInsertionCfg(module="AdaptiveFeaturePooling", at="box_roi_pool"))]
    with pytest.raises(
        StitchingError, match=re.escape("AdaptiveFeaturePooling supports torchvision's TwoMLPHead")
    ) as err:
        stitch(model, maskrcnn_aliases(model), lambda m: MASKRCNN.run(m, data), ins)
    assert "box_head is a Sequential; use one of those heads or drop AdaptiveFeaturePooling" in str(err.value)
    assert "\n" not in str(err.value)


def test_bottom_up_path_rejects_a_pyramid_whose_levels_do_not_halve(write_experiment) -> None:
    exp = load_experiment(
        write_experiment(f"""
        name: panet
        task: instance
        baseline:
          model: maskrcnn
          args: {{backbone: mobilenet_v3_small, min_size: {SIZE}, max_size: {SIZE}, num_classes: 3}}
        probe: {{image_size: [{SIZE}, {SIZE}]}}
        insertions:
          - {{name: B, module: BottomUpPath, at: fpn, mode: after}}
    """)
    )
    with pytest.raises(ConfigError, match="needs pyramid levels that halve in size"):
        stitch_variant(exp)


def test_norm_auto_follows_the_site_and_user_norm_wins(write_experiment) -> None:
    exp = experiment(
        write_experiment,
        """- {name: BU, module: BottomUpPath, at: fpn, mode: after}
        - {name: FF, module: FullyConnectedFusion, at: mask_head, args: {norm: gn}}""",
    )
    model = stitch_variant(exp).model
    bup = model.backbone.fpn.added
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in bup.modules())  # v1 FPN: no norm
    assert sum(isinstance(m, nn.ReLU) for m in bup.modules()) == 6
    ff = model.roi_heads.mask_head
    assert isinstance(getattr(ff, "0")[1], nn.GroupNorm) and getattr(ff, "0")[1].num_groups == 32
    assert ff.conv5_fc[1].num_groups == 32 and ff.conv5_fc[1].num_channels == 128

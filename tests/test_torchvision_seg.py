"""torchvision's segmentation models as baselines: aliases for backbone stages and heads, CoordAtt
stitched into DeepLabV3's backbone, weights from the torch hub cache only (never downloaded) or a
local file, fine-tuning on another class count, other input channels."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large
from torchvision.models.segmentation import LRASPP_MobileNet_V3_Large_Weights, lraspp_mobilenet_v3_large

import stitch
from stitch.build import stitch_variant
from stitch.registry import BASELINES
from stitch.wrappers import After

SHORT = {
    "fcn_resnet50": {"stem", "c2", "c3", "c4", "c5", "head", "aux"},
    "deeplabv3_resnet50": {"stem", "c2", "c3", "c4", "c5", "head", "aspp"},
    "deeplabv3_mobilenet_v3_large": {"stem", "c2", "c3", "c4", "c5", "head", "aspp"},
    "lraspp_mobilenet_v3_large": {"stem", "c2", "c3", "c4", "c5", "head"},
}


@pytest.mark.parametrize("name", list(SHORT))
def test_aliases_name_backbone_stages_and_heads(name: str) -> None:
    spec = BASELINES[name]
    args = {"num_classes": 3, **({"aux_loss": True} if name == "fcn_resnet50" else {})}
    model = spec.build(**args)
    aliases = spec.aliases(model)
    assert {a for a in aliases if "." not in a} == SHORT[name]
    paths = {p for p, _ in model.named_modules()}
    assert set(aliases.values()) <= paths and aliases["head"] == "classifier"
    if "mobilenet" in name:  # stage ends by stride: 4, 8, 16 (dilated), 32 (dilated)
        assert [aliases[f"c{i}"] for i in range(2, 6)] == [
            "backbone.3",
            "backbone.6",
            "backbone.12",
            "backbone.16",
        ]
    else:
        assert aliases["c4.5.conv2"] == "backbone.layer3.5.conv2"


def test_deeplabv3_stitches_coordatt_into_its_backbone(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: deeplab_ca
        task: segmentation
        baseline: {model: deeplabv3_resnet50, args: {num_classes: 3}}
        probe: {image_size: [64, 64]}
        insertions:
          - {name: CA, module: CoordAtt, at: [c4, c5]}
    """)
    )
    exp = stitch.load_experiment(path)
    built = stitch_variant(exp)
    for stage in ("backbone.layer3", "backbone.layer4"):
        wrapper = built.model.get_submodule(stage)
        assert isinstance(wrapper, After) and type(wrapper.added).__name__ == "CoordAttn"
    assert built.delta > 0
    with torch.no_grad():
        out = built.model.eval()(torch.rand(2, 3, 64, 64))
    assert set(out) == {"out"} and out["out"].shape == (2, 3, 64, 64)


def test_weights_come_from_the_torch_hub_cache_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    build = BASELINES["lraspp_mobilenet_v3_large"].build
    weights = LRASPP_MobileNet_V3_Large_Weights.DEFAULT
    cached = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    with pytest.raises(
        ValueError, match=f"not in the torch hub cache and stitch never downloads: place {cached.name}"
    ):
        build(weights="DEFAULT")
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    source = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    torch.save(source.state_dict(), cached)
    # fine-tuning on 3 classes: every tensor loaded, the two classifier convolutions re-initialised
    model = build(weights="DEFAULT", num_classes=3)
    own, theirs = model.state_dict(), source.state_dict()
    fresh = {k for k in own if k.startswith(("classifier.low_classifier", "classifier.high_classifier"))}
    assert all(torch.equal(own[k], theirs[k]) for k in own if k not in fresh)
    assert own["classifier.high_classifier.weight"].shape[0] == 3
    with pytest.raises(ValueError, match="is not a torchvision weights name for lraspp_mobilenet_v3_large"):
        build(weights="IMAGENET1K_V1")


def test_local_backbone_file_and_one_input_channel(tmp_path: Path) -> None:
    torch.manual_seed(1)
    classifier = mobilenet_v3_large(weights=None)
    torch.save(classifier.state_dict(), tmp_path / "mbv3.pth")
    build = BASELINES["deeplabv3_mobilenet_v3_large"].build
    model = build(num_classes=2, in_channels=1, weights_backbone=str(tmp_path / "mbv3.pth"))
    block = model.get_submodule("backbone.7.block.0.0")
    assert torch.equal(block.weight, classifier.features[7].block[0][0].weight)
    stem = model.get_submodule("backbone.0.0")
    assert stem.in_channels == 1
    assert torch.allclose(stem.weight, classifier.features[0][0].weight.sum(1, keepdim=True))
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 1, 32, 32))["out"].shape == (2, 2, 32, 32)
    assert MobileNet_V3_Large_Weights.DEFAULT.url.endswith(".pth")  # a name resolves to such a cached file

"""The timm-encoder U-Net: three timm families build with stitch's named points, encoder weights load
from a saved state dict (encoder or classification format, torch or safetensors, other input channels),
`pretrained: true` reads only a cached file, and insertions stitch at enc*/skip*."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import timm
import torch
from timm.models import get_pretrained_cfg

import stitch
from stitch.baselines.timm_unet import TIMM_UNET, build_timm_unet, cached_pretrained_file
from stitch.baselines.unet import SkipMerge
from stitch.build import stitch_variant
from stitch.cli import main
from stitch.wrappers import After

#: smallest variant of each family: (encoder, feature stages, a decoder of that many blocks)
FAMILIES = [
    ("resnet18", 5, [32, 16, 16, 8, 8]),
    ("convnext_atto", 4, [32, 16, 8, 8]),
    ("efficientnet_b0", 5, [32, 16, 16, 8, 8]),
]


def equal_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("encoder", "stages", "decoder"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_builds_for_three_timm_families_with_named_points(
    encoder: str, stages: int, decoder: list[int]
) -> None:
    model = TIMM_UNET.build(encoder=encoder, in_channels=1, num_classes=3, decoder_channels=decoder)
    aliases = TIMM_UNET.aliases(model)
    assert [a for a in aliases if a.startswith("enc")] == [f"enc{i}" for i in range(1, stages + 1)]
    assert aliases["stem"] == aliases["enc1"] and all(
        p.startswith("backbone.") for a, p in aliases.items() if "enc" in a
    )
    assert {f"skip{i}" for i in range(1, stages)} <= set(aliases) and {"up0", "dec0", "head"} <= set(aliases)
    assert all(isinstance(model.get_submodule(f"skip{i}"), SkipMerge) for i in range(1, stages))
    batch = TIMM_UNET.example_batch({"in_channels": 1, "num_classes": 3}, 2, (32, 32))
    assert TIMM_UNET.run(model.eval(), batch).shape == (2, 3, 32, 32)


def test_check_input_names_the_encoder_stride() -> None:
    assert TIMM_UNET.check_input({"encoder": "convnext_atto"}, (64, 64)) is None
    assert TIMM_UNET.check_input({"encoder": "convnext_atto"}, (48, 40)) == (
        "timm encoder 'convnext_atto' needs height and width divisible by 32, got 48x40; try 64x32"
    )


def test_loads_a_saved_encoder_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_timm_unet("resnet18", num_classes=3)
    torch.save(source.backbone.state_dict(), tmp_path / "encoder.pth")
    torch.manual_seed(2)
    loaded = build_timm_unet("resnet18", num_classes=3, encoder_weights=str(tmp_path / "encoder.pth"))
    assert equal_tensors(loaded.backbone.state_dict(), source.backbone.state_dict())
    fresh = build_timm_unet("resnet18", num_classes=3)
    assert not torch.equal(fresh.backbone.conv1.weight, source.backbone.conv1.weight)
    # a whole saved model: its backbone.* part is used
    torch.save({"model": source.state_dict()}, tmp_path / "checkpoint.pt")
    again = build_timm_unet("resnet18", num_classes=3, encoder_weights=str(tmp_path / "checkpoint.pt"))
    assert equal_tensors(again.backbone.state_dict(), source.backbone.state_dict())


def test_loads_timm_classification_weights_with_flattened_names_and_one_channel(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(3)
    classifier = timm.create_model("convnext_atto")  # keys stages.0…, head.fc…
    state = classifier.state_dict()
    save_file(state, str(tmp_path / "model.safetensors"))
    model = build_timm_unet(
        "convnext_atto", in_channels=1, num_classes=2, encoder_weights=str(tmp_path / "model.safetensors")
    )
    own = model.backbone.state_dict()  # keys stages_0…
    assert torch.equal(own["stages_2.blocks.1.conv_dw.weight"], state["stages.2.blocks.1.conv_dw.weight"])
    assert torch.allclose(own["stem_0.weight"], state["stem.0.weight"].sum(1, keepdim=True))  # RGB summed


def test_weights_that_do_not_match_are_one_line(tmp_path: Path, capsys) -> None:
    torch.save(timm.create_model("resnet10t", features_only=True).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"does not match the encoder: .* shape mismatches"):
        build_timm_unet("resnet18", encoder_weights=str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="give encoder_weights .* or pretrained: true, not both"):
        build_timm_unet("resnet18", encoder_weights="x.pth", pretrained=True)
    path = tmp_path / "exp.yaml"
    path.write_text("name: t\ntask: segmentation\nbaseline: {model: timm_unet, args: {encoder: resnet81}}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "timm has no model 'resnet81' — did you mean" in err and len(err.splitlines()) == 1


def test_pretrained_reads_only_a_cached_file(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(
        ValueError, match=r"not in the local cache and stitch never downloads: fetch them once"
    ):
        cached_pretrained_file("resnet18")
    cfg = get_pretrained_cfg("resnet18")
    assert cfg is not None and cfg.url
    cached = tmp_path / "hub" / "checkpoints" / Path(cfg.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(4)
    classifier = timm.create_model("resnet18")
    torch.save(classifier.state_dict(), cached)
    model = build_timm_unet("resnet18", num_classes=2, pretrained=True)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, classifier.layer4[1].conv2.weight)


def test_coordatt_after_the_encoder_stages_and_a_fusion_at_the_skips(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: timm_stitch
        task: segmentation
        baseline:
          model: timm_unet
          args: {encoder: efficientnet_b0, num_classes: 2, decoder_channels: [32, 16, 16, 8, 8]}
        probe: {image_size: [64, 64]}   # CGAFusion's 7x7 reflect padding wants 4x4 or more at skip4
        insertions:
          - {name: CA, module: CoordAtt, at: "enc*"}
          - {name: CGA, module: CGAFusion, at: "skip*", mode: replace}
    """)
    )
    exp = stitch.load_experiment(path)
    built = stitch_variant(exp)
    assert isinstance(built.model.get_submodule("backbone.blocks.2"), After)
    assert type(built.model.get_submodule("skip3")).__name__ != "SkipMerge"
    x = torch.rand(2, 3, 64, 64)
    base = stitch_variant(exp, "baseline").model.eval()
    with torch.no_grad():
        out = built.model.eval()(x)
        assert out.shape == (2, 2, 64, 64) and not torch.allclose(out, base(x))

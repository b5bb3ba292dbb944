"""The Mask R-CNN baseline: builder, hook-point aliases, synthetic batch, run/loss, local weights.

CPU only and offline: torchvision weights names are only resolved, never downloaded.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, MaskRCNN_ResNet50_FPN_Weights
from torchvision.ops.misc import FrozenBatchNorm2d

from stitch.baselines.maskrcnn import MASKRCNN, build_maskrcnn, maskrcnn_aliases
from stitch.baselines.maskrcnn_weights import resolve_backbone_weights, resolve_detection_weights
from stitch.model_notes import model_notes

SMALL = {"min_size": 128, "max_size": 160}
HEADS = [
    "fpn",
    "rpn_head",
    "box_roi_pool",
    "box_head",
    "box_predictor",
    "mask_roi_pool",
    "mask_head",
    "mask_predictor",
]


def light(**kw):
    return build_maskrcnn(**{"backbone": "resnet18", "num_classes": 5, **SMALL, **kw})


def small_batch(num_classes: int = 5, batch_size: int = 2):
    return MASKRCNN.example_batch({"num_classes": num_classes}, batch_size, None)


@pytest.fixture(scope="module")
def resnet50_models():
    return {v: build_maskrcnn(backbone="resnet50", version=v, min_size=64, max_size=64) for v in (1, 2)}


# --------------------------------------------------------------------------- spec and signature


def test_spec_fields():
    assert MASKRCNN.name == "maskrcnn" and MASKRCNN.task == "instance"
    assert "Mask R-CNN" in MASKRCNN.reference and "torchvision" in MASKRCNN.reference
    assert MASKRCNN.build is build_maskrcnn
    assert MASKRCNN.default_image_size == (128, 128)


def test_every_builder_parameter_has_a_default_and_no_var_args():
    params = inspect.signature(build_maskrcnn).parameters
    assert params, "builder has parameters"
    for p in params.values():
        assert p.default is not inspect.Parameter.empty, p.name
        assert p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL), p.name
        assert p.annotation is not inspect.Parameter.empty, p.name
    assert params["weights"].default is None and params["num_classes"].default == 91


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="version 2"):
        build_maskrcnn(backbone="resnet18", version=2)
    with pytest.raises(ValueError, match="backbone"):
        build_maskrcnn(backbone="resnet101")
    with pytest.raises(ValueError, match="norm"):
        build_maskrcnn(backbone="resnet18", norm="group")


# --------------------------------------------------------------------------- aliases


def _check_aliases(model: nn.Module) -> dict[str, str]:
    aliases = maskrcnn_aliases(model)
    modules = dict(model.named_modules())
    missing = {a: p for a, p in aliases.items() if p not in modules}
    assert not missing, missing
    for head in HEADS:
        assert head in aliases
    assert aliases["fpn"] == "backbone.fpn" and aliases["rpn_head"] == "rpn.head"
    assert aliases["mask_head"] == "roi_heads.mask_head"
    return aliases


def test_aliases_resnet18():
    aliases = _check_aliases(light())
    assert [aliases[f"c{i}"] for i in range(2, 6)] == [f"backbone.body.layer{i}" for i in range(1, 5)]
    assert aliases["c3.1"] == "backbone.body.layer2.1"
    assert aliases["c4.0.conv2"] == "backbone.body.layer3.0.conv2"
    assert not any(a.endswith("conv3") for a in aliases)  # BasicBlock
    assert "c2.2" not in aliases  # resnet18 has two blocks per stage


@pytest.mark.parametrize("version", [1, 2])
def test_aliases_resnet50(resnet50_models, version):
    model = resnet50_models[version]
    aliases = _check_aliases(model)
    assert aliases["c5.2.conv3"] == "backbone.body.layer4.2.conv3"
    assert aliases["c4.5"] == "backbone.body.layer3.5"  # 3-4-6-3 blocks
    assert "c4.6" not in aliases
    # a quick eval forward on a tiny image
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))])
    assert set(out) >= {"boxes", "labels", "scores", "masks"}


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_aliases_mobilenet(backbone):
    model = build_maskrcnn(backbone=backbone, num_classes=5, **SMALL)
    aliases = _check_aliases(model)
    assert aliases["stem"] == "backbone.body.0"
    for i in range(2, 6):
        assert f"c{i}" in aliases and f"c{i}.0" in aliases
    # c_i is the last block at output stride 2**i: check on a real forward
    body = model.backbone.body
    x = torch.rand(1, 3, 64, 64)
    sizes = {}
    modules = dict(model.named_modules())
    hooks = [
        modules[aliases[f"c{i}"]].register_forward_hook(
            lambda m, a, o, i=i: sizes.__setitem__(i, o.shape[-1])
        )
        for i in range(2, 6)
    ]
    with torch.no_grad():
        body(x)
    for h in hooks:
        h.remove()
    assert sizes == {2: 16, 3: 8, 4: 4, 5: 2}
    if backbone == "mobilenet_v3_large":
        assert [aliases[f"c{i}"] for i in range(2, 6)] == [f"backbone.body.{k}" for k in (3, 6, 12, 16)]


# --------------------------------------------------------------------------- example batch


def test_example_batch_is_deterministic_and_consistent():
    a = MASKRCNN.example_batch({"num_classes": 4}, 3, (96, 80))
    b = MASKRCNN.example_batch({"num_classes": 4}, 3, (96, 80))
    assert len(a["images"]) == len(a["targets"]) == 3
    for img, img_b, t, t_b in zip(a["images"], b["images"], a["targets"], b["targets"]):
        assert torch.equal(img, img_b) and all(torch.equal(t[k], t_b[k]) for k in t)
        assert img.shape == (3, 96, 80) and img.dtype == torch.float32
        assert img.min() >= 0 and img.max() <= 1
        n = len(t["labels"])
        assert 2 <= n <= 3
        assert t["boxes"].shape == (n, 4) and t["boxes"].dtype == torch.float32
        assert t["masks"].shape == (n, 96, 80) and t["masks"].dtype == torch.uint8
        assert t["labels"].dtype == torch.int64 and t["labels"].min() >= 1 and t["labels"].max() <= 3
        for box, mask in zip(t["boxes"], t["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [
                xs.min().item(),
                ys.min().item(),
                xs.max().item() + 1,
                ys.max().item() + 1,
            ]
    default = MASKRCNN.example_batch({}, 1, None)
    assert default["images"][0].shape == (3, *MASKRCNN.default_image_size)
    assert default["targets"][0]["labels"].max() <= 90


# --------------------------------------------------------------------------- run and loss


@pytest.mark.parametrize("start_training", [False, True])
def test_run_reaches_every_alias_and_restores_mode(start_training):
    model = light(norm="bn")  # BatchNorm: run() must also leave its running statistics alone
    model.train(start_training)
    aliases = maskrcnn_aliases(model)
    modules = dict(model.named_modules())
    reached: dict[str, int] = {}
    hooks = []
    for path in set(aliases.values()):

        def hook(m, args, out, path=path):
            n = out.shape[0] if isinstance(out, torch.Tensor) else 1
            reached[path] = reached.get(path, 0) + n

        hooks.append(modules[path].register_forward_hook(hook))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        losses = MASKRCNN.run(model, small_batch())
    for h in hooks:
        h.remove()
    assert model.training is start_training
    assert all(m.training is start_training for m in model.modules())
    assert not [a for a, p in aliases.items() if not reached.get(p)]
    assert reached["roi_heads.mask_predictor"] > 0 and reached["roi_heads.box_predictor"] > 0
    assert {"loss_mask", "loss_classifier", "loss_objectness"} <= set(losses)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_loss_is_finite_scalar_and_heads_get_gradients():
    model = light()
    model.eval()
    loss = MASKRCNN.loss(model, small_batch(batch_size=1))
    assert model.training is False
    assert loss.dim() == 0 and math.isfinite(loss.item()) and loss.requires_grad
    loss.backward()
    for path in [
        "rpn.head",
        "roi_heads.box_head",
        "roi_heads.box_predictor",
        "roi_heads.mask_head",
        "roi_heads.mask_predictor",
        "backbone.fpn",
        "backbone.body.layer1",
    ]:
        module = model.get_submodule(path)
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None for g in grads), path
        assert any(g.abs().sum() > 0 for g in grads), path


def test_frozen_batchnorm_by_default_and_in_train_mode():
    model = light()
    body = model.backbone.body
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        body.train()
        out_train = body(x)["3"]
        body.eval()
        out_eval = body(x)["3"]
    assert torch.equal(out_train, out_eval)
    assert any(isinstance(m, nn.BatchNorm2d) for m in light(norm="bn").backbone.body.modules())


def test_resnet50_norm_follows_argument(resnet50_models):
    # torchvision puts BatchNorm2d in an untrained v1 body and always in v2; norm="frozen_bn" swaps it
    for model in resnet50_models.values():
        assert not any(type(m) is nn.BatchNorm2d for m in model.backbone.body.modules())
    v2 = resnet50_models[2]
    assert any(type(m) is nn.BatchNorm2d for m in v2.roi_heads.mask_head.modules())  # v2 heads keep BN


def test_trainable_layers():
    def frozen(model):
        return {n.split(".")[0] for n, p in model.backbone.body.named_parameters() if not p.requires_grad}

    assert frozen(light()) == set()  # untrained: every stage trains, as torchvision's model builders do
    assert frozen(light(trainable_layers=2)) == {"conv1", "layer1", "layer2"}
    assert frozen(light(trainable_layers=0)) == {"conv1", "layer1", "layer2", "layer3", "layer4"}


# --------------------------------------------------------------------------- weights


def _params_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_weights_from_local_file(tmp_path):
    torch.manual_seed(0)
    source = light()
    path = tmp_path / "maskrcnn.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    loaded = light(weights=str(path))
    assert _params_equal(source, loaded)
    # pretrained weights: torchvision's default of 3 trainable stages
    frozen = {n.split(".")[0] for n, p in loaded.backbone.body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}

    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, ckpt)
    assert _params_equal(source, light(weights=str(ckpt)))


def test_weights_file_missing(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(ValueError) as err:
        light(weights=str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_weights_file_wrong_keys_or_shapes(tmp_path):
    state = light().state_dict()
    renamed = {k.replace("roi_heads.", "heads."): v for k, v in state.items()}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    with pytest.raises(ValueError, match="missing keys") as err:
        light(weights=str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)

    path91 = tmp_path / "coco_classes.pth"
    torch.save(light(num_classes=91).state_dict(), path91)
    note = model_notes(light(weights=str(path91)))  # num_classes=5: fine-tunes (tests/test_finetune.py)
    assert "re-initialised box_predictor, mask_predictor for 5 classes (the weights have 91)" in note[0]
    reshaped = dict(state, **{"backbone.fpn.layer_blocks.0.0.weight": torch.zeros(256, 256, 1, 1)})
    torch.save(reshaped, path91)
    with pytest.raises(ValueError, match="1 shape mismatches") as err:
        light(weights=str(path91))  # a shape outside the predictors stays an error
    assert "backbone.fpn.layer_blocks.0.0.weight (256, 256, 1, 1) vs (256, 256, 3, 3)" in str(err.value)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        light(weights=str(garbage))


def test_weights_backbone_from_local_file(tmp_path):
    torch.manual_seed(0)
    classifier = torchvision.models.resnet18()
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(classifier.state_dict(), path)
    model = light(weights_backbone=str(path))
    body = model.backbone.body
    assert torch.equal(body.conv1.weight, classifier.conv1.weight)
    assert torch.equal(body.layer4[1].conv2.weight, classifier.layer4[1].conv2.weight)
    assert torch.equal(body.layer3[0].bn1.running_var, classifier.layer3[0].bn1.running_var)
    with pytest.raises(ValueError, match=r"resnet18_imagenet\.pth"):
        build_maskrcnn(backbone="resnet34", weights_backbone=str(path), **SMALL)


def test_weights_names_resolve_without_download():
    assert resolve_detection_weights("DEFAULT", "resnet50", 1) is MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    assert resolve_detection_weights("COCO_V1", "resnet50", 2) is MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1
    assert (
        resolve_detection_weights("MaskRCNN_ResNet50_FPN_Weights.COCO_V1", "resnet50", 1)
        is MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    )
    assert (
        resolve_backbone_weights("DEFAULT", "resnet18") is torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    )
    with pytest.raises(ValueError, match=r"MaskRCNN_ResNet50_FPN_Weights\.COCO_V1"):
        build_maskrcnn(weights="MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1")  # v2 weights for v1
    with pytest.raises(ValueError, match="no Mask R-CNN weights"):
        light(weights="DEFAULT")
    with pytest.raises(ValueError, match="weights_backbone"):
        light(weights_backbone="ResNet50_Weights.DEFAULT")


def test_named_weights_are_read_from_the_hub_cache_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub cache

    def no_network(*args, **kwargs):
        raise AssertionError("stitch tried to download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(
        ValueError, match=r"not in the torch hub cache and stitch never downloads: place maskrcnn_"
    ):
        build_maskrcnn(backbone="resnet50", num_classes=2, weights="DEFAULT")
    with pytest.raises(
        ValueError, match=r"weights_backbone ResNet18_Weights\.IMAGENET1K_V1 is not in the torch hub"
    ):
        build_maskrcnn(backbone="resnet18", num_classes=2, weights_backbone="DEFAULT")


@pytest.mark.parametrize("version", [1, 2])
def test_anchor_sizes_build_both_resnet50_versions(version):
    """``anchor_sizes`` with ResNet-50 v2 once failed (torchvision's v2 builder passes its own
    ``rpn_anchor_generator`` beside ``**kwargs``): both versions take the sizes, keep the 3 anchors per
    location the RPN head is built for, and train a step."""
    torch.manual_seed(0)
    sizes = [8, 16, 32, 64, 128]
    model = build_maskrcnn(backbone="resnet50", version=version, min_size=64, max_size=64, anchor_sizes=sizes)
    assert model.rpn.anchor_generator.sizes == tuple((s,) for s in sizes)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [3] * 5
    assert model.rpn.head.cls_logits.out_channels == 3
    batch = MASKRCNN.example_batch({"num_classes": 91}, 2, (64, 64))
    model.train()
    losses = model(batch["images"], batch["targets"])
    assert all(torch.isfinite(v) for v in losses.values())

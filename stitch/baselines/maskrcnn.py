"""Mask R-CNN (He, Gkioxari, Dollár, Girshick, "Mask R-CNN", ICCV 2017, https://arxiv.org/abs/1703.06870)
as implemented by torchvision (``torchvision.models.detection``), laid out for stitching.

Nothing here re-implements the network: :func:`build_maskrcnn` calls torchvision's own builders.

- ``backbone="resnet50"``: ``maskrcnn_resnet50_fpn`` (``version=1``, the paper's R-50-FPN) or
  ``maskrcnn_resnet50_fpn_v2`` (``version=2``, Li et al. 2021 "Benchmarking Detection Transfer
  Learning with Vision Transformers": 2-conv RPN head, 4conv1fc box head, BatchNorm in FPN/heads).
- light backbones for CPU work: ``resnet18`` / ``resnet34`` through torchvision's
  ``resnet_fpn_backbone``, ``mobilenet_v3_large`` / ``mobilenet_v3_small`` through
  ``mobilenet_backbone(fpn=True)`` (torchvision's default: the last two stages, both at stride 32,
  with the anchor sizes of torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``), each wrapped in
  ``torchvision.models.detection.MaskRCNN``.

Hook-point aliases (:func:`maskrcnn_aliases`; every module path is a hook point too):

- ResNet backbones: ``c2``..``c5`` -> ``backbone.body.layer1``..``layer4``; each residual block
  ``c{i}.{j}`` -> ``backbone.body.layer{i-1}.{j}`` and its convolutions ``c{i}.{j}.conv1``,
  ``.conv2`` and (Bottleneck, ResNet-50 only) ``.conv3``.
- MobileNetV3 backbones: ``stem`` -> ``backbone.body.0``; ``c{i}`` (i = 2..5) -> the last block of
  ``backbone.body`` (the ``features`` sequence) whose output has stride ``2**i``, and ``c{i}.{j}``
  -> the j-th block (from 0) with that output stride. MobileNet blocks have no conv1/conv2 names.
- all backbones: ``fpn`` -> ``backbone.fpn``; ``rpn_head`` -> ``rpn.head``; ``box_roi_pool``,
  ``box_head``, ``box_predictor``, ``mask_roi_pool``, ``mask_head``, ``mask_predictor`` ->
  ``roi_heads.<same name>``.

Input size: torchvision's ``GeneralizedRCNNTransform`` resizes every image so that its short side
is ``min_size`` (long side at most ``max_size``); with the defaults (800/1333) a 128x128 image is
run at 800x800. For fast CPU probes pass ``min_size``/``max_size`` near the image size (e.g. 128).

Weights (torchvision names and local files) are resolved and loaded by
:mod:`stitch.baselines.maskrcnn_weights`.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from stitch.baselines.base import BaselineSpec, resnet_stage_aliases
from stitch.baselines.maskrcnn_weights import (
    cached_weights_file,
    check_file_exists,
    enum_classes,
    enum_name,
    finetune_note,
    is_weights_file,
    load_backbone_file,
    load_weights_file,
    replace_predictors,
    resolve_backbone_weights,
    resolve_detection_weights,
)
from stitch.model_mode import train_mode
from stitch.model_notes import add_note

RESNET_BACKBONES = ("resnet18", "resnet34", "resnet50")
MOBILENET_BACKBONES = ("mobilenet_v3_large", "mobilenet_v3_small")
BACKBONES = RESNET_BACKBONES + MOBILENET_BACKBONES
# Trainable backbone stages when pretrained weights are used and ``trainable_layers`` is None
# (torchvision's default in ``maskrcnn_resnet50_fpn`` / ``fasterrcnn_mobilenet_v3_large_fpn``).
_TORCHVISION_TRAINABLE_DEFAULT = 3


def build_maskrcnn(
    backbone: Literal[
        "resnet18", "resnet34", "resnet50", "mobilenet_v3_large", "mobilenet_v3_small"
    ] = "resnet50",
    version: int = 1,
    num_classes: int = 91,
    weights: str | None = None,
    weights_backbone: str | None = None,
    trainable_layers: int | None = None,
    norm: Literal["frozen_bn", "bn"] = "frozen_bn",
    min_size: int | list[int] = 800,
    max_size: int = 1333,
    anchor_sizes: list[int] | None = None,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 512,
    box_detections_per_img: int = 100,
) -> MaskRCNN:
    """Build a torchvision Mask R-CNN.

    Args:
        backbone: ``resnet50`` (torchvision's ``maskrcnn_resnet50_fpn[_v2]``) or a light backbone
            ``resnet18``, ``resnet34``, ``mobilenet_v3_large``, ``mobilenet_v3_small``.
        version: 1 or 2; 2 (``maskrcnn_resnet50_fpn_v2``) exists only for ``resnet50``.
        num_classes: number of classes including the background (COCO: 91).
        weights: whole-model weights. ``None`` (random init); a torchvision weights name for the
            chosen builder (``"DEFAULT"``, ``"COCO_V1"`` or ``"MaskRCNN_ResNet50_FPN_Weights.COCO_V1"``;
            downloaded, so it needs network or the torch hub cache; only ``resnet50``); or a local
            file (``.pth``/``.pt``…) holding a state_dict or a checkpoint dict with a ``"model"``
            (or ``"state_dict"``) key. Weights with another class count than ``num_classes``
            (COCO's 91 for a 2-class dataset) fine-tune: every other tensor is loaded and
            ``roi_heads.box_predictor`` / ``mask_predictor`` are re-initialised for
            ``num_classes``, as in torchvision's fine-tuning tutorial. Either way the model
            carries a note (:mod:`stitch.model_notes`) saying what was loaded, e.g.
            ``loaded 299 tensors, re-initialised box_predictor, mask_predictor``.
        weights_backbone: ImageNet weights for the backbone only (ignored by torchvision when
            ``weights`` is a torchvision name). A torchvision name for that backbone
            (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ``"ResNet18_Weights.IMAGENET1K_V1"``…; downloaded),
            or a local file with the classification network's state_dict (``fc.*`` /
            ``classifier.*`` keys are ignored).
        trainable_layers: how many backbone stages train (ResNet 0..5, MobileNet 0..number of
            stages), counted from the top. ``None`` follows torchvision's model builders: 3 when any
            pretrained weights are used, otherwise every stage. An explicit value is always applied.
        norm: normalisation in the backbone body. ``"frozen_bn"`` (torchvision's
            ``FrozenBatchNorm2d``: fixed statistics and affine, same in train and eval mode) or
            ``"bn"`` (``nn.BatchNorm2d``). BatchNorm in the v2 FPN and heads is part of that
            architecture and is kept.
        min_size: short side images are resized to by the model's transform; a list gives
            torchvision's multi-scale training (one size drawn per batch while training, the last
            one in evaluation).
        max_size: cap on the long side after resizing.
        anchor_sizes: anchor sizes in pixels of the resized image. ResNet backbones: one per
            pyramid level P2..P6 (torchvision: 32, 64, 128, 256, 512; small objects such as nuclei
            want smaller ones); MobileNetV3: every size on each of its 3 maps. Aspect ratios stay
            0.5, 1, 2.
        rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test, rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test, rpn_batch_size_per_image, box_batch_size_per_image,
        box_detections_per_img: torchvision's ``MaskRCNN`` arguments of the same names (its
            defaults), e.g. fewer proposals and sampled RoIs for fast CPU runs on small images.

    Raises:
        ValueError: an unknown backbone, version, norm or weights name; a local weights file that
            is missing, unreadable, or whose keys/shapes don't match the model (other than the
            predictors' class count).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, not {backbone!r}")
    if version not in (1, 2):
        raise ValueError(f"version must be 1 or 2, not {version!r}")
    if version == 2 and backbone != "resnet50":
        raise ValueError(
            f"version 2 (maskrcnn_resnet50_fpn_v2) exists only for backbone 'resnet50', not {backbone!r}"
        )
    if norm not in ("frozen_bn", "bn"):
        raise ValueError(f"norm must be 'frozen_bn' or 'bn', not {norm!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be at least 2, not {num_classes}")

    weights_file = weights if is_weights_file(weights) else None
    weights_enum = (
        resolve_detection_weights(weights, backbone, version) if weights and not weights_file else None
    )
    backbone_file = weights_backbone if is_weights_file(weights_backbone) else None
    backbone_enum = (
        resolve_backbone_weights(weights_backbone, backbone)
        if weights_backbone and not backbone_file
        else None
    )
    if weights:  # as in torchvision, whole-model weights make weights_backbone moot
        backbone_file = backbone_enum = None
    if weights_file is not None:
        check_file_exists(weights_file, "weights")
    if backbone_file is not None:
        check_file_exists(backbone_file, "weights_backbone")
    # torchvision would download a named file that is not in the torch hub cache: stitch never does
    if weights_enum is not None:
        cached_weights_file(weights_enum, "weights")
    if backbone_enum is not None:
        cached_weights_file(backbone_enum, "weights_backbone")
    pretrained = any(w is not None for w in (weights_file, weights_enum, backbone_file, backbone_enum))
    norm_layer: type[nn.Module] = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
    # Stages to train at build time; "all" (None, untrained) is applied after building.
    build_trainable = trainable_layers if trainable_layers is not None else _TORCHVISION_TRAINABLE_DEFAULT
    counts = {
        "rpn_pre_nms_top_n_train": rpn_pre_nms_top_n_train,
        "rpn_pre_nms_top_n_test": rpn_pre_nms_top_n_test,
        "rpn_post_nms_top_n_train": rpn_post_nms_top_n_train,
        "rpn_post_nms_top_n_test": rpn_post_nms_top_n_test,
        "rpn_batch_size_per_image": rpn_batch_size_per_image,
        "box_batch_size_per_image": box_batch_size_per_image,
        "box_detections_per_img": box_detections_per_img,
    }
    for key, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, not {value!r}")
    sizes = list(min_size) if isinstance(min_size, (list, tuple)) else [min_size]
    if not sizes or any(not isinstance(v, int) or v < 1 for v in sizes):
        raise ValueError(f"min_size must be a positive integer or a list of them, not {min_size!r}")
    common: dict[str, Any] = {
        "min_size": tuple(sizes) if isinstance(min_size, (list, tuple)) else min_size,
        "max_size": max_size,
        **counts,
    }
    if anchor_sizes is not None:
        if not anchor_sizes or any(not isinstance(a, int) or a < 1 for a in anchor_sizes):
            raise ValueError(
                f"anchor_sizes must be a list of positive integers (pixels), not {anchor_sizes!r}"
            )
        if backbone in RESNET_BACKBONES and len(anchor_sizes) != 5:
            raise ValueError(
                "anchor_sizes needs 5 sizes for the ResNet-FPN levels P2..P6 "
                f"(torchvision: [32, 64, 128, 256, 512]), not {len(anchor_sizes)}"
            )
        if backbone in RESNET_BACKBONES:
            common["rpn_anchor_generator"] = AnchorGenerator(
                tuple((a,) for a in anchor_sizes), ((0.5, 1.0, 2.0),) * 5
            )

    if backbone == "resnet50":
        builder = maskrcnn_resnet50_fpn if version == 1 else maskrcnn_resnet50_fpn_v2
        tv_trained = weights_enum is not None or backbone_enum is not None
        # torchvision loads named weights with their own class count; the predictors are replaced below
        tv_classes = enum_classes(weights_enum) if weights_enum is not None else num_classes
        # the v2 builder passes its own rpn_anchor_generator as well as **kwargs (a TypeError for a
        # second one), so the sizes are set after building: one size x 3 ratios per level, the
        # 3 anchors per location the RPN head is built for; the generator holds no weights
        anchors = common.pop("rpn_anchor_generator", None)
        try:
            model = builder(
                weights=weights_enum,
                weights_backbone=backbone_enum,
                num_classes=tv_classes,
                # torchvision ignores (and warns about) this without pretrained weights; applied below then.
                trainable_backbone_layers=build_trainable if tv_trained else None,
                **common,
            )
        except OSError as exc:  # a cached file that cannot be read
            raise RuntimeError(
                f"could not read torchvision weights {weights or weights_backbone!r} from the torch hub "
                f"cache ({exc}); pass a local .pth file instead"
            ) from exc
        if anchors is not None:
            model.rpn.anchor_generator = anchors
        if weights_enum is not None:
            other = tv_classes != num_classes
            loaded = replace_predictors(model, num_classes) if other else len(model.state_dict())
            add_note(
                model,
                finetune_note(enum_name(weights_enum), loaded, num_classes, tv_classes if other else None),
            )
        _set_norm(model.backbone.body, norm_layer)
    elif backbone in RESNET_BACKBONES:
        body_fpn = resnet_fpn_backbone(
            backbone_name=backbone,
            weights=backbone_enum,
            norm_layer=norm_layer,
            trainable_layers=build_trainable,
        )
        model = MaskRCNN(body_fpn, num_classes=num_classes, **common)
    else:
        body_fpn = mobilenet_backbone(
            backbone_name=backbone,
            weights=backbone_enum,
            fpn=True,
            norm_layer=norm_layer,
            trainable_layers=build_trainable,
        )
        # As torchvision's fasterrcnn_mobilenet_v3_large_fpn: all sizes on each of the 3 feature maps.
        per_map = tuple(anchor_sizes or (32, 64, 128, 256, 512))
        anchors = AnchorGenerator((per_map,) * 3, ((0.5, 1.0, 2.0),) * 3)
        model = MaskRCNN(body_fpn, num_classes=num_classes, rpn_anchor_generator=anchors, **common)

    if backbone_enum is not None:
        tensors = len(model.backbone.body.state_dict())
        add_note(
            model, f"weights_backbone {enum_name(backbone_enum)}: loaded {tensors} tensors into backbone.body"
        )
    if backbone_file is not None:
        mobilenet = backbone in MOBILENET_BACKBONES
        add_note(model, load_backbone_file(model.backbone.body, backbone_file, mobilenet=mobilenet))
    if weights_file is not None:
        add_note(model, load_weights_file(model, weights_file, "weights"))
    train_all = trainable_layers is None and not pretrained
    # torchvision's builder may have used another count, and _set_norm makes new params
    if backbone == "resnet50":
        _freeze_resnet(model.backbone.body, 5 if train_all else build_trainable)
    elif train_all:
        for p in model.backbone.body.parameters():
            p.requires_grad_(True)
    return model


# ---------------------------------------------------------------------------------------------
# backbone normalisation and freezing


def _set_norm(module: nn.Module, norm_layer: type[nn.Module]) -> None:
    """Swap BatchNorm2d <-> FrozenBatchNorm2d in place, keeping statistics and affine parameters."""
    for name, child in module.named_children():
        swap = (norm_layer is FrozenBatchNorm2d and type(child) is nn.BatchNorm2d) or (
            norm_layer is nn.BatchNorm2d and type(child) is FrozenBatchNorm2d
        )
        if swap:
            new = norm_layer(cast(torch.Tensor, child.weight).shape[0], eps=child.eps)
            with torch.no_grad():
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    getattr(new, attr).copy_(getattr(child, attr))
            setattr(module, name, new)
        else:
            _set_norm(child, norm_layer)


def _freeze_resnet(body: nn.Module, trainable_layers: int) -> None:
    """torchvision's ``_resnet_fpn_extractor`` rule: train only the top ``trainable_layers`` stages."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5 for a ResNet backbone, not {trainable_layers}")
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers.append("bn1")
    for name, p in body.named_parameters():
        p.requires_grad_(any(name.startswith(layer) for layer in layers))


# ---------------------------------------------------------------------------------------------
# hook points

HEAD_ALIASES = {
    "fpn": "backbone.fpn",
    "rpn_head": "rpn.head",
    **{
        n: f"roi_heads.{n}"
        for n in ("box_roi_pool", "box_head", "box_predictor", "mask_roi_pool", "mask_head", "mask_predictor")
    },
}


def _block_stride(block: nn.Module) -> int:
    stride = 1
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            stride *= m.stride[0]
    return stride


def maskrcnn_aliases(model: nn.Module) -> dict[str, str]:
    """Alias -> module path (as in ``model.named_modules()``); see the module docstring."""
    body = model.get_submodule("backbone.body")
    aliases: dict[str, str] = {}
    if hasattr(body, "layer1"):  # ResNet
        aliases.update(resnet_stage_aliases(body, "backbone.body."))
    else:  # MobileNetV3 features, one child per block
        names = [n for n, _ in body.named_children()]
        if names:
            aliases["stem"] = f"backbone.body.{names[0]}"
        stride = 1
        by_stride: dict[int, list[str]] = {}
        for name, block in body.named_children():
            stride *= _block_stride(block)
            by_stride.setdefault(stride, []).append(name)
        for i in range(2, 6):
            blocks = by_stride.get(2**i, [])
            if not blocks:
                continue
            aliases[f"c{i}"] = f"backbone.body.{blocks[-1]}"
            for j, name in enumerate(blocks):
                aliases[f"c{i}.{j}"] = f"backbone.body.{name}"
    aliases.update(HEAD_ALIASES)
    return aliases


# ---------------------------------------------------------------------------------------------
# data and running

Batch = dict[str, Any]


def maskrcnn_example_batch(
    args: dict[str, Any], batch_size: int, image_size: tuple[int, int] | None
) -> Batch:
    """A deterministic synthetic batch: ``{"images": [3xHxW in [0,1]], "targets": [{boxes, labels, masks}]}``.

    Each image has 2–3 objects (filled rectangles or ellipses) pasted on noise; each box is the
    tight box of its mask (x1, y1, x2, y2 with x2/y2 exclusive), labels are in 1..num_classes-1.
    """
    h, w = image_size or MASKRCNN.default_image_size
    num_classes = int(args.get("num_classes", 91))
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, not {num_classes}")
    g = torch.Generator().manual_seed(0)
    ys = torch.arange(h, dtype=torch.float32).view(h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, w)
    images, targets = [], []
    for _ in range(batch_size):
        image = torch.rand(3, h, w, generator=g) * 0.3
        n = int(torch.randint(2, 4, (1,), generator=g))
        masks, boxes = [], []
        for _ in range(n):
            r = torch.rand(5, generator=g)
            half_h = max(2.0, float(h * (0.1 + 0.15 * r[0])))
            half_w = max(2.0, float(w * (0.1 + 0.15 * r[1])))
            cy = half_h + float(r[2]) * (h - 2 * half_h)
            cx = half_w + float(r[3]) * (w - 2 * half_w)
            if r[4] < 0.5:
                mask = ((ys - cy).abs() <= half_h) & ((xs - cx).abs() <= half_w)
            else:
                mask = ((ys - cy) / half_h) ** 2 + ((xs - cx) / half_w) ** 2 <= 1.0
            yy, xx = torch.nonzero(mask, as_tuple=True)
            boxes.append([float(xx.min()), float(yy.min()), float(xx.max()) + 1, float(yy.max()) + 1])
            masks.append(mask.to(torch.uint8))
            colour = torch.rand(3, 1, 1, generator=g) * 0.7 + 0.3
            image = torch.where(mask, colour.expand(3, h, w), image)
        images.append(image.clamp(0, 1))
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.randint(1, num_classes, (n,), generator=g, dtype=torch.int64),
                "masks": torch.stack(masks),
            }
        )
    return {"images": images, "targets": targets}


def maskrcnn_run(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """One train-mode forward with targets, which reaches every hook point (RPN, box and mask heads
    on sampled proposals; torchvision adds the ground-truth boxes to the proposals, so the mask
    head always sees positives). Returns the loss dict; restores the train/eval mode and the
    BatchNorm running statistics the model had before."""
    with train_mode(model, keep_batchnorm_stats=True):
        return model(batch["images"], batch["targets"])


def maskrcnn_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Sum of torchvision's Mask R-CNN training losses (train-mode forward; mode restored after)."""
    with train_mode(model):
        losses = model(batch["images"], batch["targets"])
    return sum(losses.values(), torch.zeros(()))


MASKRCNN = BaselineSpec(
    name="maskrcnn",
    task="instance",
    reference="He et al., Mask R-CNN, ICCV 2017 (arXiv:1703.06870); "
    "torchvision.models.detection implementation",
    summary="torchvision Mask R-CNN with FPN: ResNet-50 v1/v2, or ResNet-18/34 / MobileNetV3 light backbones",
    build=build_maskrcnn,
    aliases=maskrcnn_aliases,
    example_batch=maskrcnn_example_batch,
    run=maskrcnn_run,
    loss=maskrcnn_loss,
    default_image_size=(128, 128),
)

__all__ = [
    "MASKRCNN",
    "build_maskrcnn",
    "maskrcnn_aliases",
    "maskrcnn_example_batch",
    "maskrcnn_loss",
    "maskrcnn_run",
]

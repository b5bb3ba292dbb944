"""torchvision's semantic-segmentation models as baselines, by their torchvision names.

- ``fcn_resnet50``: FCN (Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic
  Segmentation", CVPR 2015, arXiv:1411.4038) on a dilated ResNet-50.
- ``deeplabv3_resnet50`` / ``deeplabv3_mobilenet_v3_large``: DeepLabV3 (Chen, Papandreou, Schroff,
  Adam, "Rethinking Atrous Convolution for Semantic Image Segmentation", arXiv:1706.05587, 2017).
- ``lraspp_mobilenet_v3_large``: LR-ASPP (Howard et al., "Searching for MobileNetV3", ICCV 2019,
  arXiv:1905.02244).

Nothing is re-implemented: the builders call ``torchvision.models.segmentation``. The models
return ``{"out": logits}`` (and ``"aux"`` with ``aux_loss``; the segmentation task trains on
``"out"`` only). Hook-point aliases (:func:`torchvision_seg_aliases`):

- ResNet-50: ``stem`` -> ``backbone.maxpool``; ``c2``..``c5`` -> ``backbone.layer1``..``layer4``
  (``layer3``/``layer4`` dilated, output stride 8); ``c{i}.{j}`` -> block ``j``, with
  ``.conv1``/``.conv2``/``.conv3``.
- MobileNetV3-Large: ``stem`` -> ``backbone.0``; ``c{i}`` -> the last block of the stage with
  nominal stride ``2**i`` (the last stage is dilated: output stride 16), ``c{i}.{j}`` -> its
  j-th block.
- heads: ``head`` -> ``classifier``; ``aspp`` -> ``classifier.0`` (DeepLabV3); ``aux`` ->
  ``aux_classifier`` (FCN/DeepLabV3 with ``aux_loss``).

Weights (default: none; nothing is ever downloaded): ``weights`` / ``weights_backbone`` are a
torchvision weights name (``"DEFAULT"``, ``"COCO_WITH_VOC_LABELS_V1"``,
``"ResNet50_Weights.IMAGENET1K_V1"``…) read from the torch hub cache when the file is there (a
one-line error names the file to place there otherwise), or a local state-dict file. With another
``num_classes`` than the weights', every tensor is loaded and the last classifier convolutions are
re-initialised; with another ``in_channels`` the first convolution is adapted as timm does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from timm.models import adapt_input_conv
from torch import nn
from torchvision.models import WeightsEnum, get_model_weights, get_weight, segmentation

from stitch.baselines.base import BaselineSpec, resnet_stage_aliases
from stitch.baselines.factory import spec_from_factory
from stitch.baselines.maskrcnn_weights import (
    cached_weights_file,
    is_weights_file,
    load_backbone_file,
    read_state_dict,
    resolve_backbone_weights,
)
from stitch.errors import exception_text
from stitch.model_notes import add_note

#: model -> (its backbone's torchvision name, the final classifier convolutions)
MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fcn_resnet50": ("resnet50", ("classifier.4",)),
    "deeplabv3_resnet50": ("resnet50", ("classifier.4",)),
    "deeplabv3_mobilenet_v3_large": ("mobilenet_v3_large", ("classifier.4",)),
    "lraspp_mobilenet_v3_large": (
        "mobilenet_v3_large",
        ("classifier.low_classifier", "classifier.high_classifier"),
    ),
}
AUX_FINAL = "aux_classifier.4"


# ----------------------------------------------------------------------------- weights
def resolve_model_weights(name: str, model: str) -> WeightsEnum:
    """The torchvision weights enum value ``name`` names for ``model`` (no download)."""
    enum_cls = get_model_weights(model)
    try:
        value = get_weight(name) if "." in name else enum_cls.verify(name)
    except (ValueError, KeyError, AttributeError):
        value = None
    if not isinstance(value, enum_cls):
        choices = ", ".join(
            ["DEFAULT", *(f"{enum_cls.__name__}.{m}" for m in enum_cls.__members__ if m != "DEFAULT")]
        )
        raise ValueError(
            f"weights {name!r} is not a torchvision weights name for {model}; "
            f"choose {choices} or a local .pth file"
        )
    return value


def weights_path(ref: str, model: str, what: str) -> str:
    """A local file for the weights argument ``ref``: the file itself, or the cached torchvision file."""
    if is_weights_file(ref):
        return ref
    if what == "weights":
        return cached_weights_file(resolve_model_weights(ref, model), what)
    return cached_weights_file(resolve_backbone_weights(ref, MODELS[model][0]), what)


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: str, name: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with a one-line ``ValueError``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        text = exception_text(exc, join_lines=True, limit=300)
        raise ValueError(f"weights file {path!r} does not match {name}: {text}") from None


# ----------------------------------------------------------------------------- surgery
def replace_conv(
    model: nn.Module, path: str, in_channels: int | None = None, out_channels: int | None = None
) -> None:
    """Swap the convolution at ``path`` for a fresh one with other input / output channels (an input
    change keeps the trained filters, adapted as timm's ``adapt_input_conv`` does)."""
    found = model.get_submodule(path)
    if not isinstance(found, nn.Conv2d):
        raise ValueError(f"{path} is a {type(found).__name__}, not the Conv2d torchvision had there")
    old: Any = found  # its tuple sizes are what Conv2d takes
    new = nn.Conv2d(
        in_channels or old.in_channels,
        out_channels or old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
    )
    if in_channels is not None:
        with torch.no_grad():
            new.weight.copy_(adapt_input_conv(in_channels, old.weight.detach()))
            if old.bias is not None and new.bias is not None:
                new.bias.copy_(old.bias)
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)


def first_conv(model: nn.Module) -> str:
    """The path of the network's first convolution."""
    return "backbone.conv1" if hasattr(model.get_submodule("backbone"), "conv1") else "backbone.0.0"


def build_torchvision_seg(
    model: str,
    num_classes: int = 21,
    in_channels: int = 3,
    weights: str | None = None,
    weights_backbone: str | None = None,
    aux_loss: bool | None = None,
) -> nn.Module:
    """Build torchvision's ``model`` (a key of :data:`MODELS`); see the module docstring."""
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value < 1:
            raise ValueError(f"{key} must be at least 1, got {value}")
    backbone_name, finals = MODELS[model]
    state = path = None
    if weights:
        path = weights_path(weights, model, "weights")
        state = read_state_dict(path, "weights")
        if finals[-1] + ".weight" not in state:
            raise ValueError(f"weights file {path!r} has no {finals[-1]}.weight: is it a {model} state_dict?")
    backbone_file = (
        weights_path(weights_backbone, model, "weights_backbone")
        if weights_backbone and not weights
        else None
    )
    has_aux = state is not None and any(k.startswith("aux_classifier.") for k in state)
    aux = has_aux if aux_loss is None else aux_loss
    if state is not None and has_aux and not aux:
        state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    file_classes = int(state[finals[-1] + ".weight"].shape[0]) if state is not None else num_classes
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": file_classes}
    if model != "lraspp_mobilenet_v3_large":
        kwargs["aux_loss"] = aux
    elif aux_loss:
        raise ValueError("lraspp_mobilenet_v3_large has no auxiliary classifier (aux_loss)")
    net: nn.Module = getattr(segmentation, model)(**kwargs)
    if state is not None and path is not None:
        load_strict(net, state, path, model)
        add_note(net, f"loaded {len(state)} tensors from {path}")
    if backbone_file is not None:
        load_backbone_file(
            net.get_submodule("backbone"), backbone_file, mobilenet=backbone_name.startswith("mobilenet")
        )
    if file_classes != num_classes:  # fine-tuning on other classes: fresh last convolutions
        refreshed = finals + ((AUX_FINAL,) if aux else ())
        for final in refreshed:
            replace_conv(net, final, out_channels=num_classes)
        add_note(net, f"re-initialised {', '.join(refreshed)} for {num_classes} classes")
    if in_channels != 3:
        replace_conv(net, first_conv(net), in_channels=in_channels)
    return net


def builder(model: str) -> Callable[..., nn.Module]:
    """The baseline's builder for ``model``, with the arguments a YAML file can give."""
    takes_aux = model != "lraspp_mobilenet_v3_large"

    def build(
        num_classes: int = 21,
        in_channels: int = 3,
        weights: str | None = None,
        weights_backbone: str | None = None,
        aux_loss: bool | None = None,
    ) -> nn.Module:
        return build_torchvision_seg(model, num_classes, in_channels, weights, weights_backbone, aux_loss)

    def build_without_aux(
        num_classes: int = 21,
        in_channels: int = 3,
        weights: str | None = None,
        weights_backbone: str | None = None,
    ) -> nn.Module:
        return build_torchvision_seg(model, num_classes, in_channels, weights, weights_backbone)

    chosen = build if takes_aux else build_without_aux
    chosen.__name__ = chosen.__qualname__ = f"build_{model}"
    chosen.__doc__ = (
        f"torchvision's {model}: num_classes (with the background; torchvision's weights: 21), "
        "in_channels, weights / weights_backbone (a torchvision weights name read from the torch hub cache, "
        "or a local file; default none)" + (", aux_loss (the auxiliary FCN head)" if takes_aux else "") + "."
    )
    return chosen


# ----------------------------------------------------------------------------- hook points
def resnet_aliases(model: nn.Module) -> dict[str, str]:
    """Hook-point aliases of the dilated-ResNet models (FCN, DeepLabV3): ``stem``, ``c2`` … ``c5``,
    every block ``c{i}.{j}`` with its convolutions, and the heads."""
    aliases = {"stem": "backbone.maxpool"}
    aliases.update(resnet_stage_aliases(model.get_submodule("backbone"), "backbone."))
    return aliases


def mobilenet_aliases(model: nn.Module) -> dict[str, str]:
    """Hook-point aliases of the MobileNetV3 models (DeepLabV3, LR-ASPP): ``stem``, ``c2`` … ``c5``
    (the last block of each output stride), every block ``c{i}.{j}``, and the heads."""
    children = list(model.get_submodule("backbone").named_children())
    aliases = {"stem": f"backbone.{children[0][0]}"}
    level, by_level = 1, dict[int, list[str]]()
    for k, (name, block) in enumerate(children):
        if k and getattr(block, "_is_cn", False):  # torchvision's own stage marker (stride 2, or dilated)
            level += 1
        by_level.setdefault(level, []).append(name)
    for i in range(2, 6):
        blocks = by_level.get(i, [])
        if blocks:
            aliases[f"c{i}"] = f"backbone.{blocks[-1]}"
            aliases.update({f"c{i}.{j}": f"backbone.{name}" for j, name in enumerate(blocks)})
    return aliases


def torchvision_seg_aliases(model: nn.Module) -> dict[str, str]:
    """Alias -> module path; see the module docstring."""
    backbone = model.get_submodule("backbone")
    aliases = resnet_aliases(model) if hasattr(backbone, "layer1") else mobilenet_aliases(model)
    aliases["head"] = "classifier"
    if type(model).__name__ == "DeepLabV3":
        aliases["aspp"] = "classifier.0"
    if getattr(model, "aux_classifier", None) is not None:
        aliases["aux"] = "aux_classifier"
    return aliases


# ----------------------------------------------------------------------------- specs
REFERENCES = {
    "fcn_resnet50": "Long et al., Fully Convolutional Networks, CVPR 2015 (arXiv:1411.4038); torchvision",
    "deeplabv3_resnet50": "Chen et al., Rethinking Atrous Convolution (DeepLabV3), arXiv:1706.05587; "
    "torchvision",
    "deeplabv3_mobilenet_v3_large": "Chen et al., DeepLabV3, arXiv:1706.05587; Howard et al., MobileNetV3, "
    "ICCV 2019; torchvision",
    "lraspp_mobilenet_v3_large": "Howard et al., Searching for MobileNetV3 (LR-ASPP), ICCV 2019 "
    "(arXiv:1905.02244); torchvision",
}
SUMMARIES = {
    "fcn_resnet50": "torchvision FCN, dilated ResNet-50 backbone (output stride 8)",
    "deeplabv3_resnet50": "torchvision DeepLabV3 (ASPP head), dilated ResNet-50 backbone",
    "deeplabv3_mobilenet_v3_large": "torchvision DeepLabV3 (ASPP head), MobileNetV3-Large backbone",
    "lraspp_mobilenet_v3_large": "torchvision LR-ASPP, MobileNetV3-Large backbone",
}


def torchvision_seg_spec(model: str) -> BaselineSpec:
    """The :class:`BaselineSpec` of torchvision's ``model``."""
    return spec_from_factory(
        model,
        builder(model),
        "segmentation",
        aliases=torchvision_seg_aliases,
        image_size=(64, 64),
        reference=REFERENCES[model],
        summary=SUMMARIES[model],
    )


FCN_RESNET50 = torchvision_seg_spec("fcn_resnet50")
DEEPLABV3_RESNET50 = torchvision_seg_spec("deeplabv3_resnet50")
DEEPLABV3_MOBILENET_V3_LARGE = torchvision_seg_spec("deeplabv3_mobilenet_v3_large")
LRASPP_MOBILENET_V3_LARGE = torchvision_seg_spec("lraspp_mobilenet_v3_large")

"""Weights of the Mask R-CNN baseline: torchvision weights names and local state-dict files.

A weights argument of :func:`stitch.baselines.maskrcnn.build_maskrcnn` is either a torchvision
weights name (``"DEFAULT"``, ``"COCO_V1"``, ``"MaskRCNN_ResNet50_FPN_Weights.COCO_V1"``…, resolved
here to the weights enum without downloading anything) or a local file (``.pth``/``.pt``…) holding
a state_dict or a checkpoint dict with a ``"model"`` (or ``"state_dict"``) key. Local files load
strictly: missing or unexpected keys and shape mismatches are one-line ``ValueError``s.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torchvision.models import get_model_weights, get_weight
from torchvision.models._api import WeightsEnum
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, MaskRCNN_ResNet50_FPN_Weights

from stitch.errors import exception_text

#: The torchvision weights enum of each (backbone, version) torchvision has Mask R-CNN weights for.
DETECTION_WEIGHTS: dict[tuple[str, int], type[WeightsEnum]] = {
    ("resnet50", 1): MaskRCNN_ResNet50_FPN_Weights,
    ("resnet50", 2): MaskRCNN_ResNet50_FPN_V2_Weights,
}
#: File endings that make a weights argument a local file.
FILE_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt", ".bin")


def is_file_ref(ref: str | None) -> bool:
    """Whether a weights argument names a local file rather than a torchvision weights name."""
    if not ref:
        return False
    ref = str(ref)
    return (
        ref.lower().endswith(FILE_SUFFIXES)
        or "/" in ref
        or os.sep in ref
        or ref.startswith("~")
        or os.path.isfile(ref)
    )


def _resolve_enum(name: str, enum_cls: type[WeightsEnum], what: str) -> WeightsEnum:
    members = [f"{enum_cls.__name__}.{m}" for m in enum_cls.__members__ if m != "DEFAULT"]
    choices = ", ".join(["DEFAULT", *members])
    try:
        value = get_weight(name) if "." in name else enum_cls.verify(name)
    except (ValueError, KeyError, AttributeError):
        value = None
    if not isinstance(value, enum_cls):
        raise ValueError(
            f"{what} {name!r} is not a torchvision weights name for this model; "
            f"choose {choices} or a local .pth file"
        )
    return value


def resolve_detection_weights(name: str, backbone: str, version: int) -> WeightsEnum:
    """The torchvision Mask R-CNN weights enum value ``name`` names for this builder."""
    enum_cls = DETECTION_WEIGHTS.get((backbone, version))
    if enum_cls is None:
        raise ValueError(
            f"torchvision has no Mask R-CNN weights for backbone {backbone!r}; "
            f"weights {name!r} must be a local .pth file (or use weights_backbone)"
        )
    return _resolve_enum(name, enum_cls, "weights")


def resolve_backbone_weights(name: str, backbone: str) -> WeightsEnum:
    """The torchvision classification weights enum value ``name`` names for ``backbone``."""
    return _resolve_enum(name, get_model_weights(backbone), "weights_backbone")


def check_file_exists(path: str, what: str) -> None:
    """A one-line ``ValueError`` when the weights file ``path`` (argument ``what``) is missing."""
    if not os.path.isfile(os.path.expanduser(path)):
        raise ValueError(f"{what} file {path!r} does not exist")


def read_state_dict(path: str, what: str) -> dict[str, torch.Tensor]:
    """The state_dict in ``path``: a plain one, or a checkpoint's ``"model"`` / ``"state_dict"``;
    a ``module.`` prefix (DataParallel / DDP) is dropped. Read with ``weights_only=True``."""
    check_file_exists(path, what)
    try:
        obj = torch.load(os.path.expanduser(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = exception_text(exc)
        if "weights only load failed" in first.lower():  # torch's advice (weights_only=False) is unsafe
            first = "it holds Python objects besides tensors; save model.state_dict() with torch.save"
        raise ValueError(f"{what} file {path!r} could not be read as a torch state_dict: {first}") from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{what} file {path!r} holds no state_dict "
            "(a dict of tensors, or a checkpoint with a 'model' key)"
        )
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], path: str, what: str) -> None:
    """Strict load that reports missing/unexpected keys and shape mismatches as one-line ValueErrors."""
    own = module.state_dict()
    ignorable = "num_batches_tracked"  # BatchNorm has it, FrozenBatchNorm2d does not
    missing = [k for k in own if k not in state and not k.endswith(ignorable)]
    unexpected = [k for k in state if k not in own and not k.endswith(ignorable)]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(
            f"{len(shapes)} shape mismatches file vs model (e.g. {'; '.join(shapes[:3])}) "
            "— is num_classes right?"
        )
    if problems:
        raise ValueError(f"{what} file {path!r} does not match the model: {'; '.join(problems)}")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def load_weights_file(model: nn.Module, path: str, what: str) -> None:
    """Load a whole-model state_dict file into ``model`` (strictly; see :func:`read_state_dict`)."""
    _load_into(model, read_state_dict(path, what), path, what)


def load_backbone_file(body: nn.Module, path: str, mobilenet: bool) -> None:
    """Load a classification network's state_dict (or a detection checkpoint's ``backbone.body.*``)."""
    state = read_state_dict(path, "weights_backbone")
    if any(k.startswith("backbone.body.") for k in state):
        state = {k[len("backbone.body.") :]: v for k, v in state.items() if k.startswith("backbone.body.")}
    elif mobilenet:  # torchvision MobileNetV3: the body is the classifier's ``features``
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    else:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _load_into(body, state, path, "weights_backbone")

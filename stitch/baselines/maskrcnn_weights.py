"""Weights of the Mask R-CNN baseline: torchvision weights names and local state-dict files.

A weights argument of :func:`stitch.baselines.maskrcnn.build_maskrcnn` is either a torchvision
weights name (``"DEFAULT"``, ``"COCO_V1"``, ``"MaskRCNN_ResNet50_FPN_Weights.COCO_V1"``…, resolved
here to the weights enum without downloading anything) or a local file (``.pth``/``.pt``…) holding
a state_dict or a checkpoint dict with a ``"model"`` (or ``"state_dict"``) key.

Local files load strictly (missing or unexpected keys and shape mismatches are one-line
``ValueError``s) with one exception, fine-tuning: whole-model weights whose class count differs
from the model's load every tensor but the box and mask predictors, which are replaced for the
model's classes (torchvision's "TorchVision Object Detection Finetuning Tutorial" does the same by
hand). What was loaded is returned as a note for the run log (:mod:`stitch.model_notes`), e.g.
``loaded 299 tensors, re-initialised box_predictor, mask_predictor``.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import get_model_weights, get_weight
from torchvision.models._api import WeightsEnum
from torchvision.models.detection import (
    MaskRCNN,
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from stitch.errors import exception_text
from stitch.safe_load import UnsafeFileError, load_plain

#: The torchvision weights enum of each (backbone, version) torchvision has Mask R-CNN weights for.
DETECTION_WEIGHTS: dict[tuple[str, int], type[WeightsEnum]] = {
    ("resnet50", 1): MaskRCNN_ResNet50_FPN_Weights,
    ("resnet50", 2): MaskRCNN_ResNet50_FPN_V2_Weights,
}
#: The class-dependent heads, re-initialised when weights have another class count.
PREDICTORS = ("roi_heads.box_predictor", "roi_heads.mask_predictor")
#: The state-dict key whose first dimension is the class count (background included).
CLASS_SCORE_KEY = "roi_heads.box_predictor.cls_score.weight"
#: File endings that make a weights argument a local file.
FILE_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt", ".bin")


def is_weights_file(ref: str | None) -> bool:
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


def cached_weights_file(weights: WeightsEnum, what: str) -> str:
    """The torch hub cache file of torchvision ``weights``; a one-line ``ValueError`` naming the file
    to place there when it is missing (stitch never downloads)."""
    filename = os.path.basename(urlparse(weights.url).path)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if not os.path.isfile(path):
        raise ValueError(
            f"{what} {type(weights).__name__}.{weights.name} is not in the torch hub cache and stitch never "
            f"downloads: place {filename} (from {weights.url}) at {path}, or pass a local .pth file"
        )
    return path


def check_file_exists(path: str, what: str) -> None:
    """A one-line ``ValueError`` when the weights file ``path`` (argument ``what``) is missing."""
    if not os.path.isfile(os.path.expanduser(path)):
        raise ValueError(f"{what} file {path!r} does not exist")


def read_state_dict(path: str, what: str) -> dict[str, torch.Tensor]:
    """The state_dict in ``path``: a plain one, or a checkpoint's ``"model"`` / ``"state_dict"``;
    a ``module.`` prefix (DataParallel / DDP) is dropped. Read with ``weights_only=True``."""
    check_file_exists(path, what)
    try:
        obj = load_plain(os.path.expanduser(path), "cpu")
    except UnsafeFileError:  # never torch's advice (turning the check off), which would run its code
        first = "it holds Python objects besides tensors; save model.state_dict() with torch.save"
        raise ValueError(f"{what} file {path!r} could not be read as a torch state_dict: {first}") from None
    except Exception as exc:
        first = exception_text(exc)
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


def _match(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and keys whose shapes differ between a file and a model."""
    ignorable = "num_batches_tracked"  # BatchNorm has it, FrozenBatchNorm2d does not
    missing = [k for k in own if k not in state and not k.endswith(ignorable)]
    unexpected = [k for k in state if k not in own and not k.endswith(ignorable)]
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    return missing, unexpected, shapes


def _mismatch_error(
    path: str,
    what: str,
    own: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    found: tuple[list[str], list[str], list[str]],
) -> ValueError:
    """The one-line error of a file that does not match the model."""
    missing, unexpected, shapes = found
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        shown = "; ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:3])
        problems.append(f"{len(shapes)} shape mismatches file vs model (e.g. {shown})")
    return ValueError(f"{what} file {path!r} does not match the model: {'; '.join(problems)}")


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], path: str, what: str) -> int:
    """Strict load that reports missing/unexpected keys and shape mismatches as one-line
    ValueErrors; returns how many tensors were loaded."""
    own = module.state_dict()
    found = _match(own, state)
    if any(found):
        raise _mismatch_error(path, what, own, state, found)
    kept = {k: v for k, v in state.items() if k in own}
    module.load_state_dict(kept, strict=False)
    return len(kept)


def in_predictors(key: str) -> bool:
    """Whether a state-dict key belongs to the class-dependent predictors (:data:`PREDICTORS`)."""
    return any(key.startswith(p + ".") for p in PREDICTORS)


def finetune_note(ref: str, loaded: int, num_classes: int, weights_classes: int | None) -> str:
    """The note a whole-model load leaves in the run log (see :mod:`stitch.model_notes`);
    ``weights_classes`` is the weights' class count when the predictors were re-initialised."""
    if weights_classes is None:
        return f"weights {ref}: loaded {loaded} tensors"
    return (
        f"weights {ref}: loaded {loaded} tensors, re-initialised box_predictor, mask_predictor "
        f"for {num_classes} classes (the weights have {weights_classes})"
    )


def load_weights_file(model: nn.Module, path: str, what: str) -> str:
    """Load a whole-model state_dict file into ``model`` (see :func:`read_state_dict`); returns
    the note for the run log.

    Every key must be in the model with its shape, except that the predictors
    (:data:`PREDICTORS`) may have another class count: then every other tensor is loaded and the
    predictors keep the fresh initialisation the model was built with, as torchvision's
    fine-tuning tutorial does. Any other difference is a one-line ``ValueError``.
    """
    state = read_state_dict(path, what)
    own = model.state_dict()
    missing, unexpected, shapes = _match(own, state)
    if missing or unexpected or not all(in_predictors(k) for k in shapes):
        raise _mismatch_error(path, what, own, state, (missing, unexpected, shapes))
    kept = {k: v for k, v in state.items() if k in own and not (shapes and in_predictors(k))}
    model.load_state_dict(kept, strict=False)
    classes = len(state[CLASS_SCORE_KEY]) if shapes else None  # every model key is in the file
    return finetune_note(path, len(kept), len(own[CLASS_SCORE_KEY]), classes)


def load_backbone_file(body: nn.Module, path: str, mobilenet: bool) -> str:
    """Load a classification network's state_dict (or a detection checkpoint's ``backbone.body.*``);
    returns the note for the run log."""
    state = read_state_dict(path, "weights_backbone")
    if any(k.startswith("backbone.body.") for k in state):
        state = {k[len("backbone.body.") :]: v for k, v in state.items() if k.startswith("backbone.body.")}
    elif mobilenet:  # torchvision MobileNetV3: the body is the classifier's ``features``
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    else:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    loaded = _load_into(body, state, path, "weights_backbone")
    return f"weights_backbone {path}: loaded {loaded} tensors into backbone.body"


def enum_classes(weights: WeightsEnum) -> int:
    """The class count (background included) of torchvision detection weights."""
    return len(weights.meta["categories"])


def enum_name(weights: WeightsEnum) -> str:
    """``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``: a torchvision weights value as written."""
    return f"{type(weights).__name__}.{weights.name}"


def replace_predictors(model: MaskRCNN, num_classes: int) -> int:
    """Replace the box and mask predictors with freshly initialised ones for ``num_classes``
    (torchvision's fine-tuning tutorial: same input widths, the mask predictor's hidden width
    kept); returns how many state-dict tensors the rest of the model holds (those loaded)."""
    heads = model.roi_heads
    kept = sum(1 for k in model.state_dict() if not in_predictors(k))
    box = heads.box_predictor
    heads.box_predictor = FastRCNNPredictor(box.cls_score.in_features, num_classes)
    conv = heads.mask_predictor.conv5_mask
    heads.mask_predictor = MaskRCNNPredictor(conv.in_channels, conv.out_channels, num_classes)
    return kept

"""Joint image/mask transforms (torchvision ``transforms.v2`` on ``tv_tensors.Image``/``Mask``).

Training: rotate90 -> hflip/vflip -> fit-resize to ``image_size`` (times a random factor when
``augment.scale`` is set) -> random crop to ``image_size``, padding where smaller -> colour jitter
-> float in [0, 1] -> normalise.

Validation: fit-resize (keeping the aspect ratio, the whole image inside ``image_size``) -> pad
bottom/right to ``image_size`` -> float -> normalise. Deterministic.

Masks follow every geometric step with nearest-neighbour sampling and are padded with
``ignore_index``; colour steps and normalisation leave them alone. Randomness comes from torch's
global RNG only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from stitch.data.common import DataError

if TYPE_CHECKING:
    from stitch.config import DataBase

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# 1-channel images under ``normalize: imagenet``: the channel averages of ImageNet's statistics
# (what a grey image fed to an RGB-pretrained stem as three equal channels would be normalised by
# on average). Documented in stitch.config.DataBase.
IMAGENET_GREY_MEAN = (0.449,)
IMAGENET_GREY_STD = (0.226,)


def normalization(
    normalize: Any, in_channels: int, dataset: str = ""
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` on the [0, 1] scale for ``data.normalize`` and the image channel count."""
    if normalize == "none":
        return (0.0,) * in_channels, (1.0,) * in_channels
    if normalize == "imagenet":
        if in_channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        if in_channels == 1:
            return IMAGENET_GREY_MEAN, IMAGENET_GREY_STD
        raise DataError(
            f"normalize 'imagenet' needs 1- or 3-channel images, the {dataset} images have {in_channels}; "
            "give [[mean...], [std...]]"
        )
    mean, std = normalize
    if len(mean) != in_channels:
        raise DataError(
            f"data.normalize gives {len(mean)} mean/std values but the {dataset} images have {in_channels} "
            "channel(s); "
            f"give one value per channel, or use 'imagenet' / 'none'"
        )
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _size_of(flat_inputs: list[Any]) -> tuple[int, int]:
    for x in flat_inputs:
        if isinstance(x, (tv_tensors.Image, tv_tensors.Mask)):
            h, w = F.get_size(x)
            return int(h), int(w)
    raise TypeError("expected a tv_tensors.Image or tv_tensors.Mask")


class RandomRot90(v2.Transform):
    """Rotate by k * 90 degrees, k uniform in {0, 1, 2, 3} (exact, no interpolation); boxes
    (instance task, XYXY) are rotated with the image."""

    _transformed_types = (tv_tensors.Image, tv_tensors.Mask, tv_tensors.BoundingBoxes)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(4, (1,)).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["k"] == 0:
            return inpt
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return rot90_boxes(inpt, params["k"])
        return tv_tensors.wrap(
            torch.rot90(inpt.as_subclass(torch.Tensor), params["k"], dims=(-2, -1)), like=inpt
        )


def rot90_boxes(boxes: tv_tensors.BoundingBoxes, k: int) -> tv_tensors.BoundingBoxes:
    """XYXY boxes under ``torch.rot90(image, k, dims=(-2, -1))`` (counter-clockwise): once, a box
    ``[x0, y0, x1, y1]`` on an H x W canvas becomes ``[y0, W - x1, y1, W - x0]`` on W x H."""
    fmt = boxes.format
    xyxy = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
    b = xyxy.as_subclass(torch.Tensor)
    h, w = boxes.canvas_size
    for _ in range(k % 4):
        b = torch.stack([b[..., 1], w - b[..., 2], b[..., 3], w - b[..., 0]], dim=-1)
        h, w = w, h
    out = tv_tensors.wrap(b, like=xyxy, canvas_size=(h, w))
    return (
        F.convert_bounding_box_format(out, new_format=fmt)
        if fmt != tv_tensors.BoundingBoxFormat.XYXY
        else out
    )


class FitResize(v2.Transform):
    """Resize keeping the aspect ratio so the image fits ``size`` (H, W), times a factor drawn
    uniformly from ``scale_range`` when given (random scale jitter)."""

    _transformed_types = (tv_tensors.Image, tv_tensors.Mask)

    def __init__(self, size: Sequence[int], scale_range: Sequence[float] | None = None) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.scale_range = tuple(scale_range) if scale_range is not None else None

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _size_of(flat_inputs)
        r = min(self.size[0] / h, self.size[1] / w)
        if self.scale_range is not None:
            lo, hi = self.scale_range
            r *= lo + float(torch.rand(1).item()) * (hi - lo)
        return {"out": (max(1, round(h * r)), max(1, round(w * r))), "in": (h, w)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["out"] == params["in"]:
            return inpt
        return self._call_kernel(F.resize, inpt, size=list(params["out"]), antialias=True)


class PadTo(v2.Transform):
    """Pad bottom/right up to ``size`` (H, W): images with 0, masks with ``ignore_index``."""

    _transformed_types = (tv_tensors.Image, tv_tensors.Mask)

    def __init__(self, size: Sequence[int], ignore_index: int) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.ignore_index = int(ignore_index)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _size_of(flat_inputs)
        return {"pad": [0, 0, max(0, self.size[1] - w), max(0, self.size[0] - h)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["pad"]):
            return inpt
        fill = self.ignore_index if isinstance(inpt, tv_tensors.Mask) else 0
        return self._call_kernel(F.pad, inpt, padding=params["pad"], fill=fill)


def flip_steps(aug: Any) -> list[Any]:
    """The geometric steps both tasks share, in order: rotate90, hflip, vflip (each p = 0.5)."""
    steps: list[Any] = []
    if aug.rotate90:
        steps.append(RandomRot90())
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if aug.vflip:
        steps.append(v2.RandomVerticalFlip(0.5))
    return steps


def color_jitter(c: float, in_channels: int) -> v2.ColorJitter:
    """Brightness and contrast by up to ``c``; for RGB also saturation, and hue by ``c / 4``."""
    rgb = in_channels == 3
    return v2.ColorJitter(
        brightness=c, contrast=c, saturation=c if rgb else None, hue=min(0.5, c / 4) if rgb else None
    )


def build_transforms(
    cfg: DataBase, in_channels: int, mean: Sequence[float], std: Sequence[float], train: bool
) -> v2.Compose:
    """The train or val pipeline for a data config (see the module docstring)."""
    size = tuple(cfg.image_size)
    aug = cfg.augment
    steps: list[Any] = []
    if train:
        steps += flip_steps(aug)
        steps.append(FitResize(size, aug.scale))
        steps.append(
            v2.RandomCrop(
                size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: cfg.ignore_index}
            )
        )
        if aug.color_jitter > 0:
            steps.append(color_jitter(aug.color_jitter, in_channels))
    else:
        steps += [FitResize(size), PadTo(size, cfg.ignore_index)]
    steps += [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(list(mean), list(std)),
    ]
    return v2.Compose(steps)

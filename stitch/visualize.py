"""Image grids of input / ground truth / prediction (TensorBoard and ``stitch show``): pure
drawing, from a model and a data bundle to an image tensor; nothing is read or written here.

Truth and prediction are drawn over the image (a translucent colour per class, background left
as it is) and the panels are framed in grey, so that an all-foreground mask, or a white image,
stays visible against the grid."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torchvision.utils import make_grid

from stitch.model_mode import eval_mode
from stitch.tasks.segmentation import segmentation_logits


def palette(num_classes: int) -> torch.Tensor:
    """Distinct RGB colours in [0, 1] (Pascal VOC's bit-interleaved scheme); class 0 is black.
    A fresh copy of a table built once per class count (TensorBoard draws a grid every epoch)."""
    return _palette(num_classes).clone()


@functools.lru_cache(maxsize=16)
def _palette(num_classes: int) -> torch.Tensor:
    ids = torch.arange(max(num_classes, 256))
    rgb = torch.zeros(ids.shape[0], 3, dtype=torch.long)
    cid = ids.clone()
    for shift in range(7, -1, -1):  # bit k of each channel goes to bit ``shift`` of the colour
        for channel in range(3):
            rgb[:, channel] |= ((cid >> channel) & 1) << shift
        cid >>= 3
    out = rgb.float() / 255.0
    if num_classes == 2:
        out[1] = 1.0  # binary masks: white foreground
    return out


def colorize(mask: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """``H x W`` labels -> ``3 x H x W`` colours (ignored pixels grey)."""
    pal = palette(num_classes)
    m = mask.long().cpu()
    ignored = m == ignore_index
    rgb = pal[m.clamp(0, pal.shape[0] - 1)].permute(2, 0, 1)
    rgb[:, ignored] = 0.5
    return rgb


#: opacity of a class colour drawn over the image
OVERLAY_ALPHA = 0.5
#: the frame between the panels of a grid: mid grey, visible against white and black panels alike
BORDER, BORDER_VALUE = 3, 0.5
#: a binary mask's foreground over the image (white would vanish on bright images): orange
BINARY_FOREGROUND = (0.9, 0.6, 0.0)


def overlay(
    image: torch.Tensor, mask: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """``image`` (3xHxW in [0, 1]) with each class of ``mask`` (HxW labels) blended over it in its
    colour at :data:`OVERLAY_ALPHA`: class 0 (background) left as it is, ignored pixels grey,
    a binary mask's foreground orange; returns 3xHxW in [0, 1]."""
    colours = palette(num_classes)
    if num_classes == 2:
        colours[1] = torch.tensor(BINARY_FOREGROUND)
    m = mask.long().cpu()
    ignored = m == ignore_index
    painted = colours[m.clamp(0, colours.shape[0] - 1)].permute(2, 0, 1)
    painted[:, ignored] = 0.5
    base = image.detach().cpu().float()
    blended = (1 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * painted
    return torch.where((m != 0) | ignored, blended, base)


def framed_grid(tiles: list[torch.Tensor]) -> torch.Tensor:
    """Rows of three panels with a grey frame around and between them."""
    return make_grid(tiles, nrow=3, padding=BORDER, pad_value=BORDER_VALUE)


def unnormalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Back to [0, 1] RGB for display (one-channel images become grey RGB)."""
    img = image.detach().cpu().float()
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    img = (img * s + m).clamp(0, 1)
    return img.expand(3, -1, -1) if img.shape[0] == 1 else img[:3]


@torch.no_grad()
def prediction_grid(
    model: nn.Module, data: Any, n: int = 8, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Rows of (input, target over input, prediction over input) for the first ``n`` validation
    images (:func:`overlay`), framed in grey (:func:`framed_grid`)."""
    if getattr(data, "coco_gt", None) is not None:
        return instance_grid(model, data, n, device)
    items = [data.val[i] for i in range(min(n, len(data.val)))]
    with eval_mode(model):  # one forward pass for the grid (validation images share one size)
        batch = torch.stack([item["image"] for item in items]).to(device)
        preds = segmentation_logits(model(batch)).argmax(1).cpu()
    tiles = []
    for item, pred in zip(items, preds):
        image = unnormalize(item["image"], data.mean, data.std)
        tiles += [
            image,
            overlay(image, item["mask"], data.num_classes, data.ignore_index),
            overlay(image, pred, data.num_classes, data.ignore_index),
        ]
    return framed_grid(tiles)


def draw_instances(
    image: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor, labels: list[str]
) -> torch.Tensor:
    """``image`` (3xHxW in [0, 1]) with each object's mask filled (alpha 0.45) and its box and
    label drawn, one colour per object; returns 3xHxW in [0, 1]."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    canvas = (image.detach().cpu().clamp(0, 1) * 255).to(torch.uint8)
    if len(boxes):
        colours = [tuple(int(v * 255) for v in palette(len(boxes) + 2)[k + 1]) for k in range(len(boxes))]
        canvas = draw_segmentation_masks(canvas, masks.cpu().bool(), alpha=0.45, colors=colours)
        canvas = draw_bounding_boxes(canvas, boxes.cpu(), labels=labels, colors=colours, width=1)
    return canvas.float() / 255


@torch.no_grad()
def instance_grid(
    model: nn.Module, data: Any, n: int = 8, device: torch.device | str = "cpu", score_threshold: float = 0.5
) -> torch.Tensor:
    """Rows of (image, ground-truth objects, predicted objects with score >= ``score_threshold``)
    for the first ``n`` validation images of an instance dataset."""
    with eval_mode(model):
        names = data.class_names
        tiles = []
        for i in range(min(n, len(data.val))):
            item = data.val[i]
            image, target = item["image"], item["target"]
            out = model([image.to(device)])[0]
            keep = out["scores"].cpu() >= score_threshold
            pred_masks = out["masks"].cpu()[keep][:, 0] > 0.5
            pred_labels = [
                f"{names[int(c)]} {float(s):.2f}"
                for c, s in zip(out["labels"].cpu()[keep], out["scores"].cpu()[keep])
            ]
            rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
            tiles += [
                rgb.cpu(),
                draw_instances(
                    rgb, target["boxes"], target["masks"], [names[int(c)] for c in target["labels"]]
                ),
                draw_instances(rgb, out["boxes"].cpu()[keep], pred_masks, pred_labels),
            ]
    size = max(t.shape[1] for t in tiles), max(t.shape[2] for t in tiles)
    tiles = [
        torch.nn.functional.pad(t, (0, size[1] - t.shape[2], 0, size[0] - t.shape[1]), value=1.0)
        for t in tiles
    ]
    return framed_grid(tiles)

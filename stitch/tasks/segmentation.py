"""The semantic-segmentation task: loss, one training step's loss, evaluation.

The engine (``stitch/engine.py``) owns the loop, device, precision and checkpoints; a task only
says how a batch becomes a loss and how a model is evaluated, so Mask R-CNN can plug in the same
loop later.

A segmentation model returns ``N x K x H x W`` logits, either as a tensor or, like torchvision's
segmentation models, as a dict whose ``"out"`` entry holds them (:func:`segmentation_logits`);
torchvision's auxiliary ``"aux"`` output is ignored (not part of the loss).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from stitch.model_mode import eval_mode
from stitch.tasks.base import PER_IMAGE_KEY, LossMeans
from stitch.tasks.metrics import ConfusionMatrix


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, eps: float = 1.0
) -> torch.Tensor:
    """Multi-class soft Dice loss (1 - mean Dice over classes), ignored pixels masked out.

    Written here rather than imported: the segmentation libraries that ship one (smp, MONAI) would
    be a heavy dependency for ten lines, and their ignore-index handling differs.
    """
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)
    safe_target = torch.where(valid.squeeze(1), target, torch.zeros_like(target))
    probs = logits.float().softmax(1) * valid
    onehot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def segmentation_logits(output: Any) -> torch.Tensor:
    """The logits of a segmentation model's output: the tensor itself, or a dict's ``"out"``
    entry (torchvision's segmentation models); anything else is a one-line ``TypeError``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and isinstance(output.get("out"), torch.Tensor):
        return output["out"]
    if isinstance(output, dict):
        raise TypeError(
            f"a segmentation model returned a dict with keys {sorted(map(str, output))}; "
            "it needs the logits under 'out' (or a tensor)"
        )
    raise TypeError(
        f"a segmentation model returned a {type(output).__name__}; it needs an N x K x H x W logits "
        "tensor (or a dict with the logits under 'out')"
    )


@dataclass
class SegmentationTask:
    """Loss and evaluation for semantic segmentation with ``num_classes`` classes."""

    num_classes: int
    loss_name: str = "ce"
    ignore_index: int = 255

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of one batch and its parts (detached tensors, for logging: the
        loop reads them on the host only at its sync points)."""
        total, parts = self.loss_of_logits(segmentation_logits(model(batch["image"])), batch["mask"])
        return total, {k: v.detach() for k, v in parts.items()}

    def loss_of_logits(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The configured loss (``train.loss``: ``ce``, ``dice`` or ``ce+dice``, an unweighted
        sum) of ``logits`` against ``target`` and its parts: what training minimises and what
        the evaluation reports as ``val_loss``."""
        parts: dict[str, torch.Tensor] = {}
        if "ce" in self.loss_name.split("+"):
            parts["ce"] = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index)
        if "dice" in self.loss_name.split("+"):
            parts["dice"] = soft_dice_loss(logits, target, self.ignore_index)
        total = cast(torch.Tensor, sum(parts.values()))
        return total, parts

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[dict[str, Any]],
        device: torch.device,
        per_image: bool = False,
    ) -> dict[str, Any]:
        """Metrics over ``batches`` from one confusion matrix accumulated on ``device`` (in eval
        mode; the model's mode is restored after), and ``val_loss``: the configured training loss
        (:meth:`loss_of_logits`), averaged over batches weighted by their images like the epoch's
        ``train_loss``, with its parts (``val_loss_ce``, ``val_loss_dice``) when it has two or
        more. ``per_image`` adds each image's own confusion
        matrix (:data:`~stitch.tasks.base.PER_IMAGE_KEY`): their sum is the pooled one, so a
        bootstrap over images can recompute every metric exactly."""
        cm = ConfusionMatrix(self.num_classes, self.ignore_index, device)
        images: list[list[list[int]]] = []
        losses = LossMeans()
        with eval_mode(model):
            for batch in batches:
                image = batch["image"].to(device, non_blocking=True)
                target = batch["mask"].to(device, non_blocking=True)
                logits = segmentation_logits(model(image))
                losses.add(*self.loss_of_logits(logits, target), images=image.shape[0])
                pred = logits.argmax(1)
                cm.update(pred, target)
                if per_image:
                    for p, t in zip(pred, target):
                        one = ConfusionMatrix(self.num_classes, self.ignore_index, device)
                        one.update(p, t)
                        images.append(one.matrix.tolist())
        out: dict[str, Any] = dict(cm.compute())
        out.update(losses.means("val"))
        if per_image:
            out[PER_IMAGE_KEY] = images
        return out


def make_segmentation_task(data: Any, loss: str = "ce") -> SegmentationTask:
    """The task of a segmentation data bundle (:data:`stitch.registry.TASKS` entry)."""
    return SegmentationTask(data.num_classes, loss, data.ignore_index)

"""The task protocol: what the training loop needs from a task, and nothing more; and the
history keys and image-weighted means of a loss and its named parts, shared by the training
epoch (``train_loss*``) and the evaluation (``val_loss*``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

#: metrics key of the per-image statistics ``evaluate(..., per_image=True)`` adds (segmentation:
#: one confusion matrix per image, ``num_classes x num_classes`` nested lists of counts)
PER_IMAGE_KEY = "per_image_confusion"


def loss_part_key(prefix: str, part: str) -> str:
    """History key of one loss part: ``("train", "ce")`` -> ``train_loss_ce``, ``("val",
    "loss_mask")`` -> ``val_loss_mask`` (torchvision's part names already start with ``loss``)."""
    return f"{prefix}_" + (part if part.startswith("loss") else f"loss_{part}")


class LossMeans:
    """Image-weighted means over batches of a loss and its named parts, the way the training loop
    averages an epoch's loss: each batch's loss (already a mean over the batch) counts once per
    image. :meth:`means` names them ``<prefix>_loss`` and, when the loss has two or more parts,
    ``<prefix>_loss_<part>`` (:func:`loss_part_key`), as the history keeps the training parts."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.images = 0
        self.part_sums: dict[str, float] = {}

    def add(self, loss: torch.Tensor | float, parts: Mapping[str, torch.Tensor | float], images: int) -> None:
        """One batch of ``images`` images: its ``loss`` and named ``parts`` (read on the host)."""
        self.loss_sum += float(loss) * images
        self.images += images
        for name, value in parts.items():
            self.part_sums[name] = self.part_sums.get(name, 0.0) + float(value) * images

    def means(self, prefix: str = "val") -> dict[str, float]:
        """``{"<prefix>_loss": mean, "<prefix>_loss_<part>": mean, ...}`` (no parts for a loss of
        one part: it would repeat the total)."""
        n = max(self.images, 1)
        out = {f"{prefix}_loss": self.loss_sum / n}
        if len(self.part_sums) > 1:
            out.update({loss_part_key(prefix, k): v / n for k, v in self.part_sums.items()})
        return out


class Task(Protocol):
    """How a batch becomes a loss and how a model is evaluated (the loop never asks which task)."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Mapping[str, torch.Tensor | float]]:
        """The training loss of one batch and its named parts (for logging): detached 0-d tensors
        (or floats), which the loop sums on the device and reads on the host only at its sync
        points (``train.sync_every``), so a part should not be turned into a float here."""
        ...

    def evaluate(
        self, model: nn.Module, batches: Any, device: torch.device, per_image: bool = False
    ) -> dict[str, Any]:
        """Metrics of ``model`` over ``batches`` (the validation or test loader). With
        ``per_image``, a task that has per-image statistics adds them under
        :data:`PER_IMAGE_KEY` (a list, one entry per image in loader order) for the bootstrap over
        images; a task without them ignores the flag."""
        ...

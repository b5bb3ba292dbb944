"""The task protocol: what the training loop needs from a task, and nothing more."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

#: metrics key of the per-image statistics ``evaluate(..., per_image=True)`` adds (segmentation:
#: one confusion matrix per image, ``num_classes x num_classes`` nested lists of counts)
PER_IMAGE_KEY = "per_image_confusion"


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

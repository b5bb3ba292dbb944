"""The task protocol: what the training loop needs from a task, and nothing more."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn


class Task(Protocol):
    """How a batch becomes a loss and how a model is evaluated (the loop never asks which task)."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one batch and its named parts (for logging)."""
        ...

    def evaluate(self, model: nn.Module, batches: Any, device: torch.device) -> dict[str, Any]:
        """Metrics of ``model`` over ``batches`` (the validation loader)."""
        ...

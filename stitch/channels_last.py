"""``train.channels_last``: the model and the training batches' image tensors in the NHWC memory
layout (:data:`torch.channels_last`), which tensor-core convolutions (CUDA, mixed precision) run
faster in. Values and shapes are unchanged; only the strides differ, so results agree with the
default layout within floating-point rounding (the kernels sum in another order).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def model_channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its 4-D parameters and buffers in channels-last layout (in place)."""
    return model.to(memory_format=torch.channels_last)


def batch_channels_last(value: Any) -> Any:
    """Every 4-D floating-point tensor in ``value`` (nested dicts, lists, tuples: a batch) in
    channels-last layout; the rest (masks, targets, 3-D images of detection batches) unchanged."""
    if torch.is_tensor(value):
        if value.dim() == 4 and value.is_floating_point():
            return value.contiguous(memory_format=torch.channels_last)
        return value
    if isinstance(value, dict):
        return {k: batch_channels_last(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(batch_channels_last(v) for v in value)
    return value

"""Switching a model between training and evaluation mode for a while, and back.

Every place stitch switches modes (evaluation, probing, FLOP and latency measurement, drawing
predictions, Mask R-CNN's train-mode forward with targets) uses these context managers, so the
mode each submodule had before is always restored, also when the block raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool, keep_batchnorm_stats: bool) -> Iterator[nn.Module]:
    before = [(m, m.training) for m in model.modules()]
    saved = []
    if keep_batchnorm_stats:
        saved = [
            (buf, buf.detach().clone())
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for buf in m.buffers()
        ]
    model.train(training)
    try:
        yield model
    finally:
        for m, flag in before:
            m.training = flag
        if saved:
            with torch.no_grad():
                for buf, value in saved:
                    buf.copy_(value)


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """``with eval_mode(model): ...`` runs the block in evaluation mode and restores every
    submodule's previous mode afterwards."""
    return _mode(model, False, keep_batchnorm_stats=False)


def train_mode(
    model: nn.Module, keep_batchnorm_stats: bool = False
) -> contextlib.AbstractContextManager[nn.Module]:
    """``with train_mode(model): ...`` runs the block in training mode and restores every
    submodule's previous mode afterwards; with ``keep_batchnorm_stats`` the BatchNorm running
    statistics (and batch counters) are restored too, so a probing forward leaves no trace."""
    return _mode(model, True, keep_batchnorm_stats=keep_batchnorm_stats)

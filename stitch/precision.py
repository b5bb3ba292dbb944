"""Mixed precision of the training step: the autocast dtype, gradient scaling, and an optimiser
step that never advances the schedule for a step the gradient scaler skipped.

``train.precision`` is ``fp32`` (no autocast), ``fp16`` (float16 autocast with a
:class:`torch.amp.GradScaler`, CUDA only: elsewhere it trains in float32, as ``train.amp`` always
did) or ``bf16`` (bfloat16 autocast, no scaling: bfloat16 has float32's range; CUDA and CPU).
``train.amp: true`` is ``precision: fp16``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from stitch.config import TrainCfg

#: autocast dtype of each ``train.precision`` (``fp32``: none)
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_name(cfg: TrainCfg) -> str:
    """The precision ``cfg`` asks for: ``fp16`` when ``amp`` is on, else ``cfg.precision``."""
    return "fp16" if cfg.amp else cfg.precision


@dataclass(frozen=True)
class Precision:
    """How one run's training step computes: ``dtype`` for autocast (None: float32 throughout)
    and whether the loss is scaled (float16 only)."""

    dtype: torch.dtype | None
    scale: bool

    @property
    def autocast(self) -> bool:
        """Whether the forward pass runs under autocast."""
        return self.dtype is not None


def training_precision(cfg: TrainCfg, device: torch.device) -> Precision:
    """The precision of ``cfg`` on ``device``: float16 (scaled) on CUDA only, bfloat16 on CUDA
    and CPU, float32 otherwise."""
    name = precision_name(cfg)
    if name == "fp16" and device.type != "cuda":
        name = "fp32"
    if name == "bf16" and device.type not in ("cuda", "cpu"):
        name = "fp32"
    return Precision(DTYPES[name], scale=name == "fp16")


class ScheduledStep:
    """The optimiser step of the loop through a gradient scaler, then the schedule's step, the
    latter only when the optimiser really stepped.

    A :class:`~torch.amp.GradScaler` skips ``optimizer.step()`` when the scaled gradients hold
    inf or NaN (it lowers the scale instead); stepping the schedule anyway would move the rate on
    for a step that never happened (torch then warns "Detected call of lr_scheduler.step() before
    optimizer.step()"). Whether it stepped is seen through an optimiser step post-hook
    (:meth:`torch.optim.Optimizer.register_step_post_hook`), which runs only when ``step()``
    runs: no extra host synchronisation (the scaler already decides on the host), no private
    attributes. With scaling off every step is taken, as before.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
    ) -> None:
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.taken = 0  # optimiser steps that ran (the post-hook counts them)
        self.skipped = 0  # steps the scaler skipped (the schedule did not move)
        optimizer.register_step_post_hook(self.count)

    def count(self, *_: object) -> None:
        """The step post-hook: one more optimiser step ran."""
        self.taken += 1

    def __call__(self, parameters: Iterable[torch.Tensor], clip_grad_norm: float | None) -> bool:
        """Unscale and clip (when ``clip_grad_norm``), step the optimiser through the scaler,
        update the scale, and step the schedule if the optimiser stepped; True if it did."""
        if clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
        before = self.taken
        self.scaler.step(self.optimizer)
        self.scaler.update()
        stepped = self.taken > before
        if stepped:
            self.scheduler.step()
        else:
            self.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        return stepped

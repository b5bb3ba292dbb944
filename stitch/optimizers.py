"""The optimisers ``train.optimizer.name`` chooses (entries of :data:`stitch.registry.OPTIMIZERS`):
each takes the parameters to train and the ``train.optimizer`` block."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from stitch.config import OptimizerCfg


def sgd(params: Any, cfg: OptimizerCfg) -> torch.optim.Optimizer:
    """SGD with momentum and (coupled) weight decay."""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def adam(params: Any, cfg: OptimizerCfg) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba, ICLR 2015) with L2 weight decay added to the gradient."""
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def adamw(params: Any, cfg: OptimizerCfg) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter, ICLR 2019): decoupled weight decay."""
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

"""The stitching wrappers: the modules that hold a network's original component and the inserted
one. Their class and attribute names (``base``, ``added``, ``scale``, ``module``, ``adapter``)
appear in every stitched model's state-dict keys, so they must never change.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class After(nn.Module):
    """``added(base(*inputs))``."""

    def __init__(self, base: nn.Module, added: nn.Module) -> None:
        super().__init__()
        self.base, self.added = base, added

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.added(self.base(*args, **kwargs))


class Before(nn.Module):
    """``base(added(x))`` for a point with one tensor input."""

    def __init__(self, base: nn.Module, added: nn.Module) -> None:
        super().__init__()
        self.base, self.added = base, added

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.base(self.added(x), *args, **kwargs)


class Residual(nn.Module):
    """``y = base(x); y + scale * added(y)``; ``scale`` is a learnable scalar or absent (1)."""

    def __init__(self, base: nn.Module, added: nn.Module, scale: float | None = None) -> None:
        super().__init__()
        self.base, self.added = base, added
        self.scale = nn.Parameter(torch.tensor(float(scale))) if scale is not None else None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        y = self.base(*args, **kwargs)
        if self.scale is None:
            return y + self.added(y)
        return y + self.scale * self.added(y)


class Adapted(nn.Module):
    """A module followed by the 1x1 conv adapter that makes its output fit what follows."""

    def __init__(self, module: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.module, self.adapter = module, adapter

    def forward(self, *args: Any) -> torch.Tensor:
        return self.adapter(self.module(*args))


#: The wrapper class of each mode that keeps the original component (``residual`` has its own
#: constructor argument, ``replace`` no wrapper).
WRAPPERS: dict[str, type[nn.Module]] = {"after": After, "before": Before}

__all__ = ["WRAPPERS", "Adapted", "After", "Before", "Residual"]

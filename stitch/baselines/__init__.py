"""Baselines by name. Each file defines one :class:`~stitch.baselines.base.BaselineSpec`."""
from __future__ import annotations

from stitch.baselines.base import BaselineSpec
from stitch.baselines.maskrcnn import MASKRCNN
from stitch.baselines.unet import UNET

BASELINES: dict[str, BaselineSpec] = {b.name: b for b in (UNET, MASKRCNN)}


def get_baseline(name: str) -> BaselineSpec:
    """The baseline called ``name`` (``KeyError`` if there is none)."""
    return BASELINES[name]


__all__ = ["BASELINES", "BaselineSpec", "get_baseline"]

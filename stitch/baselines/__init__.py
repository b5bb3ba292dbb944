"""Baselines by name. Each file defines one :class:`~stitch.baselines.base.BaselineSpec`."""
from __future__ import annotations

from stitch.baselines.base import BaselineSpec
from stitch.baselines.maskrcnn import MASKRCNN
from stitch.baselines.unet import UNET

BASELINES: dict[str, BaselineSpec] = {b.name: b for b in (UNET, MASKRCNN)}

__all__ = ["BASELINES", "BaselineSpec"]

"""Baselines by name. Each file defines one :class:`~stitch.baselines.base.BaselineSpec`.

``BASELINES`` is the harness registry (:data:`stitch.registry.BASELINES`): its entries name
``stitch.baselines.unet:UNET`` and ``stitch.baselines.maskrcnn:MASKRCNN`` and import them on first
use, so importing this package does not import torchvision's detection models.
"""

from __future__ import annotations

from stitch.baselines.base import BaselineSpec
from stitch.registry import BASELINES

__all__ = ["BASELINES", "BaselineSpec"]

"""stitch: module-stitching and ablation experiments on PyTorch vision models.

Python API::

    exp = stitch.load_experiment("experiments/unet_coordatt.yaml")
    model = stitch.build_model(exp)                 # every insertion
    base = stitch.build_model(exp, "baseline")      # the same seed, nothing stitched
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["StitchError", "build_model", "load_experiment", "plan_variants", "stitch_variant"]


def __getattr__(name: str) -> Any:
    # lazy, so `stitch --help` and config-only use do not pay for importing torch
    if name == "load_experiment":
        from stitch.config import load_experiment

        return load_experiment
    if name in ("build_model", "stitch_variant"):
        from stitch import build

        return getattr(build, name)
    if name == "plan_variants":
        from stitch.plan import plan_variants

        return plan_variants
    if name == "StitchError":
        from stitch.errors import StitchError

        return StitchError
    raise AttributeError(name)

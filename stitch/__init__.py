"""stitch: module-stitching and ablation experiments on PyTorch vision models.

Python API::

    exp = stitch.load_experiment("experiments/unet_coordatt.yaml")
    model = stitch.build_model(exp)                 # every insertion
    base = stitch.build_model(exp, "baseline")      # the same seed, nothing stitched

    @stitch.register_module("my_attn", kind="unary", reference="…")   # in a plugin file
    class MyAttn(nn.Module): ...
"""

from __future__ import annotations

from typing import Any

#: the one place the version is written: pyproject.toml reads it (``[tool.setuptools.dynamic]``),
#: ``stitch --version`` prints it
__version__ = "0.1.0"
__all__ = [
    "StitchError",
    "add_note",
    "build_model",
    "load_experiment",
    "plan_variants",
    "register_baseline",
    "register_module",
    "stitch_variant",
]


def __getattr__(name: str) -> Any:
    # lazy, so `stitch --help` and config-only use do not pay for importing torch
    if name == "load_experiment":
        from stitch.plugins import load_experiment_with_plugins

        return load_experiment_with_plugins
    if name == "register_module":
        from modules_zoo.registry import register

        return register
    if name == "add_note":
        from stitch.model_notes import add_note

        return add_note
    if name == "register_baseline":
        from stitch.baselines.factory import register_baseline

        return register_baseline
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

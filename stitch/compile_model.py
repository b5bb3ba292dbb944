"""``train.compile``: ``torch.compile`` of a (stitched) model for training, in place.

The stitching wrappers (:mod:`stitch.wrappers`) trace without graph breaks, so a stitched U-Net
compiles to one graph per mode of use (training, evaluation). torchvision's detection models
(Mask R-CNN) do not: their RPN, box sampling and post-processing hold data-dependent control flow
and shapes (``nonzero``, ``unique``, ``.item()``: about 40 graph breaks), so only their backbone
(body and FPN or neck, where stitched backbone modules sit and most of the compute is) is compiled
and the heads run eagerly.

Options: the default ``inductor`` backend, default ``mode`` (neither ``reduce-overhead``, whose
CUDA graphs re-record at every new batch shape and overwrite outputs a loop may still hold, nor
``max-autotune``, whose compile takes minutes), ``dynamic=None`` (torch's automatic dynamic
shapes: the first shape is compiled static, a dimension seen to change, such as the short last
batch, validation batches or multi-scale detection inputs, is recompiled once as symbolic instead
of once per size) and ``fullgraph=False`` (a graph break in a user's own module costs speed, it
does not fail the run; ``tests/test_compile.py`` asserts there are none in the shipped modules).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from stitch.errors import StitchError

__all__ = ["COMPILE_OPTIONS", "compile_for_training", "compile_problem", "compile_target"]

#: What :func:`compile_for_training` passes to ``nn.Module.compile`` besides the backend.
COMPILE_OPTIONS: dict[str, object] = {"mode": None, "dynamic": None, "fullgraph": False}


def compile_target(model: nn.Module) -> str:
    """The module path :func:`compile_for_training` compiles: ``""`` (the whole model), or
    ``"backbone"`` for a torchvision detection model (its heads break the graph; see above)."""
    return "backbone" if isinstance(model, GeneralizedRCNN) else ""


def compile_problem(device: torch.device, backend: str = "inductor") -> str | None:
    """Why ``backend`` cannot compile for ``device`` here (one line naming the fix), or None.

    inductor builds C++ on CPU (the compiler inductor looks for: ``$CXX``, else ``g++``, ``clang++``
    on macOS, ``cl`` on Windows) and Triton kernels on CUDA; without them the first training step
    would fail deep inside torch. Other backends and device types are not checked."""
    if backend != "inductor":
        return None
    if device.type == "cpu":
        default = "cl" if sys.platform == "win32" else "clang++" if sys.platform == "darwin" else "g++"
        compiler = os.environ.get("CXX") or default
        if shutil.which(compiler) is None:
            return (
                f"train.compile on CPU needs a C++ compiler and {compiler!r} is not on PATH; "
                "install one (or set CXX) or set train.compile: false"
            )
    elif device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return (
            "train.compile on CUDA needs Triton, which is not installed; "
            "install the triton package matching torch or set train.compile: false"
        )
    return None


def check_compile(compile_on: bool, device: torch.device) -> None:
    """Before anything is written: a :class:`~stitch.errors.StitchError` (one line naming the fix)
    when ``train.compile`` is on and :func:`compile_problem` finds ``device`` cannot compile."""
    problem = compile_problem(device) if compile_on else None
    if problem is not None:
        raise StitchError(problem)


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def compile_for_training(model: nn.Module, *, backend: str = "inductor") -> nn.Module:
    """Compile ``model`` (or, for a detection model, its backbone) in place and return ``model``.

    Call it after the model is on its device. In place (``nn.Module.compile``, not
    ``torch.compile(model)``, which would return a wrapper whose state-dict keys all start with
    ``_orig_mod.``): the model stays the same object with the same parameters, so state-dict keys,
    checkpoints, ``best.pt``, parameter groups and the optimiser are exactly those of an eager run,
    and a checkpoint loads into either. Compiling an already compiled model again is harmless (it
    recompiles). ``backend`` is ``inductor`` for training; the tests use ``aot_eager``, which traces
    the same graphs and runs them without code generation.

    Raises :class:`~stitch.errors.StitchError` (one line) when :func:`compile_problem` finds the
    backend's compiler missing for the model's device.
    """
    problem = compile_problem(_device_of(model), backend)
    if problem is not None:
        raise StitchError(problem)
    path = compile_target(model)
    part = model.get_submodule(path) if path else model
    part.compile(backend=backend, **COMPILE_OPTIONS)
    return model

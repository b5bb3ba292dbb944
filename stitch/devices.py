"""Choosing the device a command runs on, and moving batches to it."""

from __future__ import annotations

from typing import Any

import torch

from stitch.errors import StitchError


def pick_device(name: str | None = None) -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:N``) if given, else CUDA when present, else CPU."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise StitchError(f"--device {name!r}: use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise StitchError(
                f"--device {name}: CUDA is not available on this machine (use --device cpu or leave it out)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise StitchError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors in ``value`` (nested dicts, lists, tuples) moved to ``device``; the rest unchanged."""
    if torch.is_tensor(value):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value

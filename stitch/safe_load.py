"""Reading ``.pt`` files without running code: every ``torch.load`` in stitch goes through here.

A checkpoint is a pickle, and unpickling runs whatever the file says; run directories are shared
between people and machines, so a planted ``epoch-*.pt`` or ``best.pt`` must never execute.
``torch.load(weights_only=True)`` unpickles only tensors, numbers, strings, lists, tuples and
dicts (what stitch writes: model, optimiser, schedule and scaler states, and the loop state as a
plain dict) and refuses anything else; :func:`load_plain` turns that refusal into one line naming
the file, without torch's advice to retry with the check turned off.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from stitch.errors import StitchError, exception_text


class UnsafeFileError(StitchError):
    """A ``.pt`` file holding pickled Python objects besides plain data: refused, never run."""


def load_plain(path: str | os.PathLike[str], map_location: Any = "cpu", fix: str = "") -> Any:
    """``torch.load(path, weights_only=True)``; a file whose pickle names anything but plain data
    raises :class:`UnsafeFileError` (one line naming the file and ``fix``). Other failures (a
    truncated or damaged file) propagate as they are, for the caller to handle."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in exception_text(exc).lower():
            raise
        raise UnsafeFileError(
            f"{os.fspath(path)}: refused: it holds pickled Python objects besides tensors, numbers, strings, "
            "lists and dicts, and loading it could run code"
            + (f"; {fix}" if fix else "; delete it or replace it with a file you trust")
        ) from None

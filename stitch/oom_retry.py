"""Out-of-memory retries: which errors are a CUDA out-of-memory, the smaller micro-batch a run retries
with (half the micro-batch, twice the accumulation: the same effective batch), and the message of a
run that still does not fit.

At most :data:`MAX_HALVINGS` halvings per run. Only an even micro-batch is halved (``6 x 1`` becomes
``3 x 2``): halving an odd one (or 1) would change the effective batch ``batch_size x grad_accum``,
so the run fails at once instead, with the same advice.
"""

from __future__ import annotations

import gc
from typing import Any

import torch

#: how many times a run's micro-batch is halved before it is declared ``failed``
MAX_HALVINGS = 2
_COUNT = {1: "one halving", 2: "two halvings"}


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error: :class:`torch.OutOfMemoryError` (``torch.cuda.OutOfMemoryError``
    is the same class), or a ``RuntimeError`` whose message says "out of memory" (cuDNN, cuBLAS)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def current_micro_batch(batch_size: int, grad_accum: int, retries: list[dict[str, Any]]) -> tuple[int, int]:
    """``(batch_size, grad_accum)`` a run trains with: the experiment's, or the last retry's."""
    if retries:
        return int(retries[-1]["batch_size"]), int(retries[-1]["grad_accum"])
    return batch_size, grad_accum


def halved(batch_size: int, grad_accum: int) -> tuple[int, int] | None:
    """Half the micro-batch and twice the accumulation, or None when ``batch_size`` is odd (1
    included): its half would change the effective batch ``batch_size * grad_accum``."""
    if batch_size < 2 or batch_size % 2:
        return None
    return batch_size // 2, grad_accum * 2


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The error's first line (at most ``limit`` characters): what a retry records."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def give_up_message(batch_size: int, grad_accum: int, retries: list[dict[str, Any]], amp: bool) -> str:
    """Why a run that ran out of memory at ``batch_size x grad_accum`` is not retried, with the
    advice: after :data:`MAX_HALVINGS` halvings, or a micro-batch that cannot be halved."""
    text = f"CUDA out of memory at micro-batch {batch_size}"
    if retries:
        chain = " -> ".join(
            str(b) for b in [retries[0]["batch_size"] * 2, *(r["batch_size"] for r in retries)]
        )
        text += f" after {_COUNT.get(len(retries), f'{len(retries)} halvings')} ({chain})"
    if len(retries) < MAX_HALVINGS:
        text += (
            f"; micro-batch {batch_size} cannot be halved without changing the effective batch "
            f"({batch_size} x {grad_accum})"
        )
    advice = "lower data.image_size or use a smaller model"
    return f"{text}; {advice}" + ("" if amp else ", or set train.amp: true")


def free_memory(device: torch.device) -> None:
    """Collect what the failed attempt left (its frames are gone with the exception) and hand
    CUDA's cached blocks back, so the retry starts with the memory a fresh run would have."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

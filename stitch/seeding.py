"""Seeds and random-generator states: what makes a run repeat bit for bit and resume exactly.

Every epoch starts by re-seeding Python, NumPy and torch from :func:`epoch_seed` ``(seed, epoch)``;
a mid-epoch checkpoint holds :func:`rng_state` so a resumed epoch draws what it would have drawn.
"""

from __future__ import annotations

import os
import random
from typing import Any, cast

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """Deterministic algorithms (and cuDNN settings) so a run repeats bit for bit."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: a few CUDA kernels (e.g. nll_loss2d forward) have no deterministic version; they
    # warn instead of failing the run. On CPU every op used here is deterministic.
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's generators (and CUDA's, when initialised) as
    plain data (tensors, numbers, lists), for a checkpoint."""
    version, internal, gauss = random.getstate()
    numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, cached = numpy_state
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` returned."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"]:
        torch.cuda.set_rng_state_all([state.cpu() for state in rng["cuda"]])


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of one run (distinct across seeds and epochs)."""
    return (seed * 100_003 + epoch * 7919 + 17) % 2**31

"""Peak memory of a training run, in MiB, stored as ``peak_memory_mb`` in the run's row.

- **CUDA**: ``torch.cuda.max_memory_allocated`` of the run's device, its peak statistics reset
  when the run (or its resumption) starts: the most memory tensors held at once during the
  training and validation epochs (PyTorch's caching allocator may reserve more from the driver).
- **CPU**: the process's maximum resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``).
  It counts the whole process (interpreter, libraries, the loaded data set, every earlier run in
  the same process) and never decreases, so it bounds the run's own use from above; runs trained
  one after another in one ``stitch run`` report at least the highest peak before them. Data
  loader workers are other processes and are not counted. None where ``resource`` does not exist
  (Windows).

A resumed run keeps the larger of its stored peak and the resumed part's.
"""

from __future__ import annotations

import sys

import torch

MIB = 2**20
#: what the report's "Peak memory (MiB)" column means (its caption sentence)
CAPTION = (
    "Peak memory: mean over seeds of each run's peak during training, in MiB: CUDA max allocated on a "
    "GPU; on a CPU the process's max resident set size, an upper bound that includes earlier runs "
    "of the same process."
)


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring a run's peak on ``device`` (CUDA: reset the peak statistics; CPU: nothing)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """The peak so far in MiB: CUDA max allocated since :func:`reset_peak_memory`, else the
    process's max RSS (None where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MIB if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def larger(a: float | None, b: float | None) -> float | None:
    """The larger of two peaks, either of which may be unknown."""
    return b if a is None else a if b is None else max(a, b)

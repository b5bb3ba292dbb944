"""An epoch's running loss sums kept on the training device, read by the host only at sync points.

Reading a CUDA tensor's value on the host (``float(loss)``, ``loss.item()``, ``if
torch.isfinite(loss)``) waits for every queued kernel: once per step, the GPU idles while the
host catches up. :class:`EpochSums` keeps the epoch's loss sum and loss-part sums as float64
tensors on the device and the per-step values queued; :meth:`EpochSums.flush` reads every queued
value in one transfer. The loop flushes every :func:`sync_interval` micro-steps, at the end of
the epoch and before a mid-epoch checkpoint; that is when it checks for a non-finite loss and
hands the steps' values to the callbacks.

The sums are bit-identical to the former host sums: a float32 loss widened to float64 is exact,
and ``sum + value * images`` is the same float64 arithmetic in the same order on either side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

#: micro-steps between host reads on a device where a read waits for queued work (CUDA)
ACCELERATOR_SYNC_EVERY = 50


def sync_interval(sync_every: int | None, device: torch.device) -> int:
    """Micro-steps between host reads: ``sync_every`` when set, else every step on the CPU
    (reading a CPU tensor waits for nothing) and :data:`ACCELERATOR_SYNC_EVERY` elsewhere."""
    if sync_every is not None:
        return sync_every
    return 1 if device.type == "cpu" else ACCELERATOR_SYNC_EVERY


@dataclass
class StepValues:
    """One micro-step's values as the host reads them: its number in the epoch (from 1), its
    images, its loss and (when the loss has two or more named parts) the parts."""

    step: int
    images: int
    loss: float
    parts: dict[str, float] = field(default_factory=dict)


class EpochSums:
    """The running sums of one training epoch (images times each micro-step's loss and parts)
    on ``device``, and the micro-steps not yet read by the host. ``loss_sum``, ``images`` and
    ``part_sums`` start a resumed epoch where a mid-epoch checkpoint left it."""

    def __init__(
        self,
        device: torch.device,
        loss_sum: float = 0.0,
        images: int = 0,
        part_sums: Mapping[str, float] | None = None,
    ) -> None:
        self.device = device
        self.loss_sum = self.tensor(loss_sum)
        self.images = images
        self.part_sums = {name: self.tensor(value) for name, value in (part_sums or {}).items()}
        self.pending: list[tuple[int, int, list[str], list[torch.Tensor]]] = []

    def tensor(self, value: float | torch.Tensor) -> torch.Tensor:
        """``value`` as a detached float64 tensor on the device (no host read)."""
        if isinstance(value, torch.Tensor):
            return value.detach().to(self.device, torch.float64)
        return torch.tensor(value, dtype=torch.float64, device=self.device)

    def add(
        self, step: int, images: int, loss: torch.Tensor, parts: Mapping[str, torch.Tensor | float]
    ) -> None:
        """Add micro-step ``step`` (``images`` images, its ``loss`` and named ``parts``; parts are
        summed only when there are two or more, as the history keeps them)."""
        value = self.tensor(loss)
        self.loss_sum += value * images
        self.images += images
        names = list(parts) if len(parts) > 1 else []
        values = [value]
        for name in names:
            part = self.tensor(parts[name])
            total = self.part_sums.get(name)
            self.part_sums[name] = part * images if total is None else total + part * images
            values.append(part)
        self.pending.append((step, images, names, values))

    def flush(self) -> list[StepValues]:
        """The queued micro-steps' values, read on the host in one transfer (in step order)."""
        if not self.pending:
            return []
        flat = torch.stack([v for *_, values in self.pending for v in values]).tolist()
        read, k = [], 0
        for step, images, names, values in self.pending:
            parts = dict(zip(names, flat[k + 1 : k + len(values)], strict=True))
            read.append(StepValues(step, images, flat[k], parts))
            k += len(values)
        self.pending.clear()
        return read

    def host(self) -> tuple[float, dict[str, float]]:
        """The loss sum and part sums as host floats (a read: call it at a sync point)."""
        return float(self.loss_sum), {name: float(total) for name, total in self.part_sums.items()}

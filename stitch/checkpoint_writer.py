"""The epoch checkpoint, optionally written by a background thread while the next epoch trains.

At an epoch's end the loop takes an :class:`EpochCheckpoint`: what the checkpoint holds, copied
to host memory when it is written in the background (training changes parameters and optimiser
state in place), and hands it to a :class:`CheckpointWriter`. Writing it is exactly the sequence
the loop has always run: ``epoch-NNNN.pt`` (atomic, checksummed, fsynced), ``best.pt`` when this
epoch is the best (after its checkpoint, so never ahead of it), the old checkpoints pruned
counting from this epoch, and the mid-epoch ``interrupted.pt`` (now older) removed.

With ``train.async_checkpoint`` on (automatic: on CUDA, where the CPU idles while the GPU
trains) one thread writes while the next epoch's steps run; at most one write is in flight (the
next submit waits for the one before: memory for one copy). :meth:`CheckpointWriter.join` waits
for it and re-raises its error (a full disk's one-line :class:`~stitch.errors.DiskFullError`)
in the calling thread; leaving the writer's ``with`` block joins it, so the thread never
outlives the block. Off, :meth:`CheckpointWriter.submit` writes at once, from the live objects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import torch

from stitch.checkpoints import (
    INTERRUPTED,
    TrainingObjects,
    cpu_copy,
    prune_checkpoints,
    save_atomic,
    save_checkpoint,
)


def background_writes(setting: bool | None, device: torch.device) -> bool:
    """Whether epoch checkpoints are written in the background: ``train.async_checkpoint`` when
    set, else automatic: on CUDA only (on the CPU the thread would compete with training for the
    cores)."""
    return setting if setting is not None else device.type == "cuda"


@dataclass
class EpochCheckpoint:
    """One epoch's checkpoint files, ready to be written (:meth:`write`)."""

    ckpt_dir: Path
    #: the checkpoint's content: the four state dicts and ``"state"`` (the loop state as a dict)
    content: dict[str, Any]
    keep_last: int

    @property
    def epoch(self) -> int:
        """The epoch it completes."""
        return cast(int, self.content["state"]["epoch"])

    def write(self) -> None:
        """``epoch-NNNN.pt``, then ``best.pt`` when the loop state's best epoch is this one, then
        the pruning of older checkpoints and the removal of ``interrupted.pt``."""
        epoch, state = self.epoch, self.content["state"]
        save_checkpoint(self.content, self.ckpt_dir / f"epoch-{epoch:04d}.pt")
        if state["best_epoch"] == epoch:  # after the epoch's checkpoint: best.pt is never ahead of it
            best = {"model": self.content["model"], "epoch": epoch, "metrics": state["best_metrics"]}
            save_atomic(best, self.ckpt_dir / "best.pt")
        prune_checkpoints(self.ckpt_dir, epoch, self.keep_last)
        # a mid-epoch checkpoint is now older than this one
        (self.ckpt_dir / INTERRUPTED).unlink(missing_ok=True)


def epoch_checkpoint(
    ckpt_dir: Path, objects: TrainingObjects, state: dict[str, Any], keep_last: int, copy: bool
) -> EpochCheckpoint:
    """The checkpoint of the epoch ``state`` (the loop state's ``__dict__``) has just completed.
    ``copy``: every tensor copied to host memory and every other value deep-copied, so that
    training on does not change it (for a background write); otherwise the live objects."""
    content = {**objects.state_dicts(), "state": state}
    return EpochCheckpoint(ckpt_dir, cpu_copy(content) if copy else content, keep_last)


class CheckpointWriter:
    """Runs checkpoint writes one at a time, in a background thread when ``background``; use it
    as a context manager (leaving the block waits for the write in flight)."""

    def __init__(self, background: bool) -> None:
        self.background = background
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(self, write: Callable[[], None]) -> None:
        """Wait for the previous write (re-raising its error), then run ``write``: in the
        background thread, or here and now."""
        self.join()
        if not self.background:
            write()
            return

        def run() -> None:
            try:
                write()
            except BaseException as exc:  # handed to the main thread at the next join
                self.error = exc

        self.thread = threading.Thread(target=run, name="stitch-checkpoint-writer", daemon=True)
        self.thread.start()

    def join(self) -> None:
        """Wait for the write in flight, if any; re-raise the error it ended with."""
        thread, self.thread = self.thread, None
        if thread is not None:
            thread.join()
        error, self.error = self.error, None
        if error is not None:
            raise error

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # the write's own error (a full disk) wins over the one leaving the block: it is why the
        # files are not there; the other stays its __context__
        self.join()

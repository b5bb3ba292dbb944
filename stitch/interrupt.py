"""Ctrl-C while training: finish the optimiser step, save a checkpoint, say how to resume.

:func:`stop_on_sigint` is what :func:`stitch.engine.train` wraps its loop in: in the main thread,
the first SIGINT only sets :attr:`StopRequest.requested` (the loop checks it once per step and
stops at the next optimiser-step boundary); a second one goes to the handler that was there
before (Python's raises ``KeyboardInterrupt`` at once). The previous handler is back when the
block ends, however it ends. :func:`interrupted_message` says where a run stopped and the
command line that resumes it (:func:`resume_command`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

NOTE = b"\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again stops at once)\n"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`stitch.engine.train` at an optimiser-step boundary: ``step``
    micro-steps of ``epoch`` were done and saved to ``path``; calling it again continues there."""

    def __init__(self, epoch: int, step: int, path: Path) -> None:
        super().__init__(f"interrupted at epoch {epoch}, step {step}; checkpoint saved to {path}")
        self.epoch, self.step, self.path = epoch, step, path


class StopRequest:
    """Set by the first Ctrl-C: the loop stops at its next optimiser-step boundary."""

    def __init__(self) -> None:
        self.requested = False


@contextlib.contextmanager
def stop_on_sigint() -> Iterator[StopRequest]:
    """A :class:`StopRequest` that the first SIGINT sets while the block runs (main thread only;
    elsewhere, or where SIGINT is ignored or handled outside Python, it is never set and nothing
    changes)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or previous == signal.SIG_IGN:  # None: a handler not set from Python
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if not request.requested:
            request.requested = True
            with contextlib.suppress(OSError):  # not print: a handler may interrupt another write
                os.write(2, NOTE)
            return
        signal.signal(signal.SIGINT, previous)
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupted_message(exc: KeyboardInterrupt, argv: Sequence[str] | None = None) -> str:
    """``interrupted at epoch E, step S; checkpoint saved; resume with: stitch …`` for a
    :class:`TrainingInterrupted` (without the epoch and checkpoint for another Ctrl-C); ``argv``:
    the command's arguments, by default this process's."""
    where = (
        f" at epoch {exc.epoch}, step {exc.step}; checkpoint saved"
        if isinstance(exc, TrainingInterrupted)
        else ""
    )
    return f"interrupted{where}; resume with: {resume_command(sys.argv[1:] if argv is None else argv)}"


def resume_command(argv: Sequence[str]) -> str:
    """The ``stitch`` command line that resumes the command ``argv`` (its arguments after the
    program name), without ``--force`` (which would start over)."""
    return shlex.join(["stitch", *(a for a in argv if a != "--force")])

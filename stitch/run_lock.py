"""One process per run directory: :func:`run_dir_lock` holds an exclusive lock on ``RUN_DIR/.lock``
while ``stitch run``, ``stitch sweep`` or ``stitch report`` works in it, so a second one refuses
(or waits, with ``--wait``) instead of training every run twice.

The lock is :func:`fcntl.flock` on ``RUN_DIR/.lock``, a file that is created once and never
replaced or removed (a lock lives on the file's inode: replacing the file would hand out a second,
unrelated lock). The kernel releases it when the holder's process ends in any way, SIGKILL
included, so a lock left by a dead process is simply taken by the next one. While holding it, the
holder writes who it is (pid, host, command line, start time) as JSON into that same file, which
a refused process reads for its message; a record whose process is gone (same host) or that is
empty or unreadable is never quoted as the holder.

Why not the ``filelock`` package (4.x, installed as a dependency of torch): it is not a declared
dependency of stitch, its 4.x code base (soft-lock fallbacks, break markers, leases, in-process
singletons) is far larger than the 40 lines needed here and may leave files besides the lock
file, and it records no holder; flock gives the one property that matters, release on process
death, directly. (Windows has no flock; stitch's run directories are POSIX-only like its CI.)

The holder record is written in place with one ``write`` into the locked file rather than through
:mod:`stitch.fileio`: an atomic replace would swap the inode the lock lives on. A reader that
catches it half-written retries, then names "another process" without details.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stitch.config import Experiment
from stitch.errors import StitchError
from stitch.fileio import remove_stale_temporaries
from stitch.runs import open_run_dir

LOCK_FILE = ".lock"
_RECORD_RETRY_S = 1.0  # how long a refused process waits for a record it can quote
_held: dict[str, int] = {}  # lock file -> fd, of the locks this process holds


def _close_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the copies of the parent's lock files. A
    flock lives while any copy of its descriptor is open, so a worker outliving a SIGKILLed
    parent for a few seconds would otherwise keep the run directory locked."""
    for fd in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class RunDirLocked(StitchError):
    """Another live process holds the run directory's lock."""


def holder_text(record: dict[str, Any] | None) -> str:
    """``pid 123 on host (stitch run exp.yaml, since 2026-11-28 23:50:01 UTC)`` or ``another process``."""
    if record is None:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record["started"]))
    return f"pid {record['pid']} on {record['host']} ({record['command']}, since {since})"


def _command_line(command: str) -> str:
    """``command`` with this process's further arguments when its own arguments start with it
    (``stitch run`` -> ``stitch run exp.yaml --out runs``)."""
    words = command.split()
    if sys.argv[1 : len(words)] == words[1:]:
        return shlex.join([*words, *sys.argv[len(words) :]])
    return command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read_record(lock_file: Path) -> dict[str, Any] | None:
    """The holder record, or None when it is missing, half-written or left by a dead process."""
    try:
        record = json.loads(lock_file.read_text(encoding="utf-8"))
        pid, host, started = int(record["pid"]), str(record["host"]), float(record["started"])
        command = str(record["command"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host == socket.gethostname() and not _alive(pid):
        return None  # stale: the new holder has taken the lock but not written its record yet
    return {"pid": pid, "host": host, "started": started, "command": command}


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _take_or_name_holder(fd: int, lock_file: Path) -> tuple[bool, dict[str, Any] | None]:
    """``(True, None)`` once this process has the lock; otherwise ``(False, the holder's record)``
    (None: unknown)."""
    deadline = time.monotonic() + _RECORD_RETRY_S
    while True:
        if _try_lock(fd):
            return True, None
        record = _read_record(lock_file)
        if record is not None or time.monotonic() >= deadline:
            return False, record
        time.sleep(0.05)


def _write_record(fd: int, command: str, writable: bool) -> None:
    if not writable:
        return
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": _command_line(command),
        "started": time.time(),
    }
    data = (json.dumps(record) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _open_lock_file(lock_file: Path) -> tuple[int, bool] | None:
    """An fd on the lock file and whether it is writable; None for a read-only directory that
    has no lock file (no stitch process has ever worked in it, so there is nothing to share)."""
    try:
        return os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666), True
    except PermissionError:
        try:
            return os.open(lock_file, os.O_RDONLY), False
        except FileNotFoundError:
            return None


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, command: str, wait: bool = False) -> Iterator[None]:
    """Hold ``run_dir``'s exclusive lock for the block (``command``, e.g. ``"stitch run"``, is
    recorded as the holder). Another live holder: :class:`RunDirLocked` with one line naming it,
    or, with ``wait``, one line saying so and a block until it is released. ``run_dir`` must
    exist (the caller creates it); nothing but ``RUN_DIR/.lock`` is ever written. Re-entering it
    in the process that holds it is allowed."""
    lock_file = Path(run_dir) / LOCK_FILE
    key = os.path.realpath(lock_file)
    if key in _held:  # held by an enclosing block: that one releases it
        yield
        return
    opened = _open_lock_file(lock_file)
    if opened is None:
        yield
        return
    fd, writable = opened
    owner = os.getpid()
    try:
        taken, holder = _take_or_name_holder(fd, lock_file)
        if not taken:
            if not wait:
                raise RunDirLocked(
                    f"{run_dir} is in use by {holder_text(holder)}; wait for it, or pass --wait"
                )
            print(f"waiting for {holder_text(holder)} to release {run_dir}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _write_record(fd, command, writable)
        _held[key] = fd
        try:
            yield
        finally:
            if os.getpid() == owner:  # not in a forked child, whose copy is closed already
                del _held[key]
                if writable:
                    os.ftruncate(fd, 0)  # no record of a holder that has gone
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        if os.getpid() == owner:
            os.close(fd)


@contextlib.contextmanager
def open_locked_run_dir(exp: Experiment, out: str | Path, command: str, wait: bool = False) -> Iterator[Path]:
    """:func:`~stitch.runs.open_run_dir` under the run directory's lock, held for the block. When
    the directory exists already its lock is taken before ``open_run_dir`` copies the experiment
    file in, so a refused second command changes nothing in it. Once it holds the lock, the
    temporary files a killed writer left in the directory are deleted."""
    with contextlib.ExitStack() as stack:
        existing = Path(out) / exp.cfg.name  # where open_run_dir puts it
        if existing.is_dir():
            stack.enter_context(run_dir_lock(existing, command, wait))
        run_dir = open_run_dir(exp, out)
        stack.enter_context(run_dir_lock(run_dir, command, wait))  # a re-entry if taken above
        remove_stale_temporaries(run_dir)  # left by a killed writer; no other process writes here now
        yield run_dir

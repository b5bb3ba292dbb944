"""Writing files so that a reader never sees half of one: every file stitch writes goes through
:func:`atomic_write` (or :func:`atomic_path` for writers that want a path, such as matplotlib).

The data goes to a uniquely named temporary file in the destination folder (several processes,
such as sweep workers, may share a run directory), with the permissions the destination has (or
a new file would get), and is then renamed over the destination with :func:`os.replace`, which
is atomic on POSIX and Windows; the file and then its folder are flushed to disk (``fsync``), so
not even a power cut leaves an empty file under the real name. On any
failure the temporary file is removed, and a write that failed for lack of space becomes a
one-line :class:`~stitch.errors.DiskFullError`. Written by hand because the standard library
has no atomic writer and the packages that do (``atomicwrites``) are unmaintained.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from stitch.errors import disk_full_as_one_line, disk_full_error


def _file_mode(path: Path) -> int:
    """The permission bits ``path`` has, or those ``open(path, "w")`` would give a new file."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _sync(path: Path) -> None:
    """``fsync`` a file or a folder (a folder cannot be synced on some systems: skipped there)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


#: the name of :func:`atomic_path`'s temporary files: ``.<name>.<8 random characters>.tmp<suffix>``
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^.]*)?")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a killed writer left under ``folder`` (its whole tree); returns
    them. Only for a folder no other process writes in (a run directory under its lock)."""
    removed = []
    for path in sorted(Path(folder).rglob(".*.tmp*")):
        match = TEMPORARY_NAME.fullmatch(path.name)
        if match and path.is_file() and match["name"].endswith(match["suffix"] or ""):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` with the same suffix (so writers that infer a format from
    it still do); renamed to ``path`` when the block ends without an exception, removed if not."""
    final = Path(path)
    with disk_full_as_one_line(final):  # no room for even an empty file (no free inode)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{final.suffix}", dir=final.parent)
        os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, _file_mode(final))  # mkstemp makes it private (0600); give it what open() would
        yield tmp
        _sync(tmp)  # on disk before the rename: a power cut never leaves an empty file under the name
        os.replace(tmp, final)
        _sync(final.parent)  # and the rename itself
    except BaseException as exc:
        full = disk_full_error(exc, final)  # measured while the partial file still takes its space
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from None
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """``open(path, mode)`` that replaces ``path`` only once everything is written and flushed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp:
        binary = mode == "wb"
        with open(
            tmp, mode, encoding=None if binary else encoding, newline=None if binary else newline
        ) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike[str], data: Any, **dumps_kwargs: Any) -> None:
    """``json.dumps(data, **dumps_kwargs)`` plus a final newline, written atomically."""
    write_text(path, json.dumps(data, **dumps_kwargs) + "\n")

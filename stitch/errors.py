"""Errors that are the user's to fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import re
import shutil
import traceback
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


class StitchError(Exception):
    """A user mistake: bad YAML, an unknown name, a module that does not fit its point."""


class ConfigError(StitchError):
    """A mistake at a known place in the experiment file (file, line and YAML path)."""

    def __init__(
        self, message: str, file: str | None = None, line: int | None = None, where: str = ""
    ) -> None:
        self.file, self.line, self.where, self.detail = file, line, where, message
        prefix = ""
        if file:
            prefix = f"{file}:{line}: " if line else f"{file}: "
        if where:
            prefix += f"{where}: "
        super().__init__(prefix + message)


class StitchingError(StitchError):
    """An insertion that cannot be stitched at a point (names the insertion, the point, the cause)."""

    def __init__(
        self, insertion: str, point: str, cause: str, field: str = "at", yaml_path: tuple = ()
    ) -> None:
        self.insertion, self.point, self.cause, self.field = insertion, point, cause, field
        self.yaml_path = yaml_path  # ('insertions', 0) or ('insertions', 0, 'nest', 1): where in the file
        super().__init__(f"insertion {insertion!r} at {point!r}: {cause}")


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """`` — did you mean 'x'?`` for the closest choices, or an empty string."""
    choices = list(dict.fromkeys(choices))
    close = difflib.get_close_matches(str(name), choices, n=n, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [
            lowered[c] for c in difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.5)
        ]
    if not close:
        close = [c for c in choices if str(name) and c.lower().startswith(str(name).lower())][:n]
    if not close:
        return ""
    # a far closer name hides the weak ones ('optimiser': 'optimizer', not also 'compile')
    best = difflib.SequenceMatcher(None, str(name).lower(), close[0].lower()).ratio()
    close = [
        c for c in close if difflib.SequenceMatcher(None, str(name).lower(), c.lower()).ratio() >= best - 0.25
    ]
    return " — did you mean " + " or ".join(repr(c) for c in close) + "?"


def exception_text(exc: BaseException, *, join_lines: bool = False, limit: int | None = None) -> str:
    """A library exception's message as one line, to quote inside a stitch error: its first line
    (with ``join_lines``, all its lines with white space collapsed), cut to ``limit`` characters
    with ``...``; its type name when the message is empty. (:func:`one_line_message` is the line
    the CLI prints for an error stitch raised itself.)"""
    if join_lines:
        text = " ".join(str(exc).split()) or type(exc).__name__
    else:
        lines = str(exc).strip().splitlines()
        text = lines[0] if lines and lines[0] else type(exc).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def check_types(fn: Callable[..., Any], args: Mapping[str, Any]) -> str | None:
    """Why ``args`` do not match ``fn``'s type annotations (one line), or None.

    Checked with pydantic's lax validation of each annotated parameter, so an int is fine for a
    float and ``None`` for an ``Optional``; a string where a number is expected is not.
    """
    from pydantic import TypeAdapter, ValidationError

    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: nothing to check against
        return None
    for name, value in args.items():
        hint = hints.get(name)
        if hint is None:
            continue
        try:
            TypeAdapter(hint).validate_python(value, strict=isinstance(value, str) and hint is not str)
        except ValidationError as exc:
            first = exc.errors()[0]["msg"]
            expected = "" if typing.get_origin(hint) is typing.Literal else f" (expected {_type_name(hint)})"
            return f"argument {name!r}={value!r}: {first}{expected}"
        except Exception:  # an annotation pydantic cannot check
            continue
    return None


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def one_line_message(exc: BaseException) -> str:
    """The user-facing line of an error. An error raised in a DataLoader worker arrives wrapped
    in the worker's traceback text; its own message is what follows the last ``SomeError: ``."""
    text = str(exc)
    if "Original Traceback" in text:
        found = list(re.finditer(r"[\w.]*(?:Error|Exception): ", text))
        if found:
            return text[found[-1].end() :].strip().splitlines()[0]
    return text.splitlines()[0] if text else type(exc).__name__


class DiskFullError(StitchError):
    """A write that failed for lack of space: names the disk, its free space and the file."""


#: ``errno`` values of a write refused for lack of space (a full disk, an exhausted quota)
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: a write that failed without an errno (torch's zip writer says only "unexpected pos" or
#: "PytorchStreamWriter failed writing file") counts as a full disk when less than this is free
LOW_SPACE_BYTES = 1 << 20
_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL, the primary result code of "database or disk is full"
#: SQLite's "disk I/O error" and "unable to open database file" (SQLITE_IOERR, SQLITE_CANTOPEN): what
#: it says when it cannot create or grow its ``-wal`` and ``-shm`` files; a full disk when space is low
_SQLITE_IO = (10, 14)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or while handling (``__cause__``,
    ``__context__``), each once."""
    chain: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is not None and all(e is not seen for seen in chain):
            chain.append(e)
            todo += [e.__cause__, e.__context__]
    return chain


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes an ordinary user may still write on the file system holding ``path`` (its nearest
    existing folder), or None when that cannot be read."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def mount_point(path: str | os.PathLike[str]) -> Path:
    """The mount point of the file system holding ``path`` (its nearest existing folder)."""
    folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    while not os.path.ismount(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def size_text(n: int) -> str:
    """``n`` bytes in a few characters: ``0 B``, ``512 B``, ``1.5 KiB``, ``12.0 MiB``."""
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


def is_disk_full(exc: BaseException, path: str | os.PathLike[str]) -> bool:
    """Whether ``exc``, raised while writing ``path``, means there was no space left: an
    ``OSError`` with ENOSPC or EDQUOT anywhere in its chain, SQLite's "database or disk is full",
    or an error that does not say why (torch's zip writer, SQLite's "disk I/O error") while under
    :data:`LOW_SPACE_BYTES` are free."""
    chain = exception_chain(exc)
    vague = False  # an error that does not say why a write failed
    for e in chain:
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            return True
        code = getattr(e, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF == _SQLITE_FULL:
            return True
        sqlite_io = isinstance(code, int) and code & 0xFF in _SQLITE_IO
        vague |= isinstance(e, RuntimeError) or (isinstance(e, OSError) and e.errno is None) or sqlite_io
    if vague:
        free = free_bytes(path)
        return free is not None and free < LOW_SPACE_BYTES
    return False


def disk_full_error(exc: BaseException, path: str | os.PathLike[str]) -> DiskFullError | None:
    """The one-line :class:`DiskFullError` for ``exc`` raised while writing ``path`` when it
    means the disk (or the quota) is full (:func:`is_disk_full`), else None. The frames of the
    failed write are cleared, so a writer that still holds its (removed) file open lets go of it
    and the space it took is free again for what comes next (marking the run failed)."""
    if not is_disk_full(exc, path):
        return None
    chain = exception_chain(exc)
    free = free_bytes(path)
    for e in chain:
        if e.__traceback__ is not None:
            traceback.clear_frames(e.__traceback__)  # frames still running are left alone
    quota = any(isinstance(e, OSError) and e.errno == errno.EDQUOT for e in chain)
    left = "disk quota exceeded" if quota else f"{size_text(free)} free" if free is not None else "full"
    return DiskFullError(
        f"no space left on {mount_point(path)} ({left}) while writing {path}; free space and run the "
        "same command again (training resumes from the last checkpoint)"
    )


@contextlib.contextmanager
def disk_full_as_one_line(path: str | os.PathLike[str]) -> Iterator[None]:
    """Run the block; an ``OSError`` that means the disk under ``path`` is full is raised as the
    one-line :class:`DiskFullError` (:func:`disk_full_error`), any other as it is."""
    try:
        yield
    except OSError as exc:
        full = disk_full_error(exc, path)
        if full is None:
            raise
        raise full from None

"""Errors that are the user's to fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable, Iterable, Mapping
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

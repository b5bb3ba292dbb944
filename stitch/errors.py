"""Errors that are the user's to fix. The CLI prints them as one line and exits with code 2."""
from __future__ import annotations

import difflib
from typing import Iterable


class StitchError(Exception):
    """A user mistake: bad YAML, an unknown name, a module that does not fit its point."""


class ConfigError(StitchError):
    """A mistake at a known place in the experiment file (file, line and YAML path)."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, where: str = "") -> None:
        self.file, self.line, self.where, self.detail = file, line, where, message
        prefix = ""
        if file:
            prefix = f"{file}:{line}: " if line else f"{file}: "
        if where:
            prefix += f"{where}: "
        super().__init__(prefix + message)


class StitchingError(StitchError):
    """An insertion that cannot be stitched at a point (names the insertion, the point, the cause)."""

    def __init__(self, insertion: str, point: str, cause: str, field: str = "at") -> None:
        self.insertion, self.point, self.cause, self.field = insertion, point, cause, field
        super().__init__(f"insertion {insertion!r} at {point!r}: {cause}")


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """`` — did you mean 'x'?`` for the closest choices, or an empty string."""
    choices = list(choices)
    close = difflib.get_close_matches(str(name), choices, n=n, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.5)]
    if not close:
        close = [c for c in choices if str(name) and c.lower().startswith(str(name).lower())][:n]
    if not close:
        return ""
    return " — did you mean " + " or ".join(repr(c) for c in close) + "?"

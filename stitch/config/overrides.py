"""Command-line overrides: ``key.path=value`` set in an experiment's raw mapping before it is checked.

The key is a YAML path: mapping keys joined by dots, list items by their index (``insertions.0.at``
or ``insertions[0].at``); the value is read as YAML (``3``, ``0.1``, ``true``, ``null``,
``[0, 1]``, ``{lr: 0.1}``). Missing mappings on the way are created, so an unknown key reaches
the schema check and gets its ``did you mean``. Every mistake is a one-line
:class:`~stitch.errors.ConfigError` placed at ``command line``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import yaml

from stitch.config.inheritance import EXTENDS_KEYS
from stitch.config.source import SourceMap, format_path
from stitch.config.validation_errors import short_repr
from stitch.errors import ConfigError

#: the "file" of a value given on the command line, in error messages
OVERRIDE_SOURCE = "command line"
_PART = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


def is_override(token: str) -> bool:
    """Whether a command-line word is meant as ``key=value`` (it holds ``=`` and is no option)."""
    return "=" in token and not token.startswith("-")


def parse_override(text: str) -> tuple[tuple[str | int, ...], Any]:
    """``"train.epochs=3"`` -> ``(("train", "epochs"), 3)``; digits between dots (or in brackets)
    become ints, used as list indices where the value there is a list."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise _error(f"{text!r} is not key.path=value (for example train.epochs=3)")
    if not key:
        raise _error(f"{text!r} has no key before '=' (write key.path=value, for example train.epochs=3)")
    if not value.strip():
        raise _error(
            f"{text!r} has no value after '=' (write {key}=null for none, {key}=\"''\" for an empty string)"
        )
    path: list[str | int] = []
    for part in key.split("."):
        match = _PART.fullmatch(part)
        if match is None:
            raise _error(
                f"{text!r}: {key!r} is not a key path (keys joined by dots, list items by their index: "
                "insertions.0.at or insertions[0].at)"
            )
        name, indices = match.groups()
        path.append(int(name) if name.isdigit() else name)
        path += [int(i) for i in re.findall(r"\d+", indices)]
    if path[0] in EXTENDS_KEYS:
        raise _error(f"{text!r}: base files cannot be set on the command line; write {path[0]}: in the file")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        raise _error(
            f"{text!r}: the value is not valid YAML (quote strings, write lists as [1, 2])"
        ) from None
    return tuple(path), parsed


def apply_overrides(data: dict[str, Any], source: SourceMap, overrides: Sequence[str]) -> None:
    """Set each ``key.path=value`` of ``overrides`` in ``data``, in order (a later one wins), and
    record in ``source`` that those values came from the command line."""
    for text in overrides:
        path, value = parse_override(text)
        _set(data, source, path, value, text)


def _set(data: dict[str, Any], source: SourceMap, path: tuple, value: Any, text: str) -> None:
    node: Any = data
    done: tuple = ()
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not isinstance(part, int) or not 0 <= part < len(node):
                items = f"{len(node)} items (0 .. {len(node) - 1})" if len(node) != 1 else "1 item (0)"
                raise _error(
                    f"{text!r}: {format_path(done)} is a list of {items if node else 'no items'}; "
                    f"{part!r} is not one of them"
                )
            key: str | int = part
        elif isinstance(node, dict):
            key = part if part in node else str(part)
        else:
            raise _error(
                f"{text!r}: {format_path(done)} is {short_repr(node)}, not a mapping or a list; "
                f"set it as a whole ({format_path(done)}=...)"
            )
        done = (*done, key)
        if last:
            node[key] = value
            source.drop(done)
            source.place(done, OVERRIDE_SOURCE, None)
        elif isinstance(node, dict) and node.get(key) is None and isinstance(path[i + 1], int):
            where = format_path(done)
            raise _error(
                f"{text!r}: {where} is not given, so it has no item {path[i + 1]}; set it as a whole"
            )
        elif isinstance(node, dict) and node.get(key) is None:
            node[key] = {}  # created: an unknown key beneath reaches the schema check
            source.drop(done)
            source.place(done, OVERRIDE_SOURCE, None)
        node = node[key]


def _error(message: str) -> ConfigError:
    return ConfigError(message, OVERRIDE_SOURCE)

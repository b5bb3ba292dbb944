"""Where each value of an experiment file is: line numbers of YAML paths, and paths as text.

A YAML path is a tuple of mapping keys and list indices, e.g. ``("insertions", 0, "at")``,
written ``insertions[0].at`` by :func:`format_path`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from stitch.errors import ConfigError


def format_path(path: tuple) -> str:
    """A YAML path as text: ``("insertions", 0, "at")`` -> ``insertions[0].at``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


@dataclass
class SourceMap:
    """Line numbers of every YAML path of one file."""

    file: str
    lines: dict[tuple, int] = field(default_factory=dict)

    @classmethod
    def from_node(cls, root: yaml.Node | None, file: str) -> SourceMap:
        """The map of a composed YAML document (``yaml.compose``); None for an empty document.

        Raises :class:`~stitch.errors.ConfigError` for a key given twice in one mapping.
        """
        source = cls(file)
        if root is not None:
            _node_lines(root, (), source.lines, file)
        return source

    def line(self, path: tuple) -> int | None:
        """Line of ``path`` or of its deepest ancestor present in the file."""
        path = tuple(path)
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def error(self, path: tuple, message: str) -> ConfigError:
        """A :class:`~stitch.errors.ConfigError` placed at ``path`` (file, line and YAML path)."""
        return ConfigError(message, self.file, self.line(path), format_path(path))


def _node_lines(node: yaml.Node, path: tuple, out: dict[tuple, int], file: str = "") -> None:
    """Record the line of every YAML path; a key given twice in one mapping is an error (PyYAML
    would silently keep the last one, and an insertion list could vanish unnoticed)."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            child = (*path, key.value)
            line = key.start_mark.line + 1
            if key.value in seen:
                where = format_path(child)
                raise ConfigError(
                    f"key {key.value!r} appears twice (also on line {seen[key.value]}); "
                    "YAML would keep only the last one",
                    file,
                    line,
                    where,
                )
            seen[key.value] = line
            out[child] = line
            _node_lines(value, child, out, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, (*path, i), out, file)

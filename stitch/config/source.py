"""Where each value of an experiment file is: line numbers of YAML paths, and paths as text.

A YAML path is a tuple of mapping keys and list indices, e.g. ``("insertions", 0, "at")``,
written ``insertions[0].at`` by :func:`format_path`. An experiment composed of several files
(``extends:``) and command-line overrides keeps, for each path, the file (or ``command line``)
its value came from.
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
    """Line numbers of every YAML path of one file, and the other files some paths came from."""

    file: str
    #: the line of each path (None: a value given on the command line)
    lines: dict[tuple, int | None] = field(default_factory=dict)
    #: paths whose value came from another file than :attr:`file` (a base file, the command line)
    files: dict[tuple, str] = field(default_factory=dict)

    @classmethod
    def from_node(cls, root: yaml.Node | None, file: str) -> SourceMap:
        """The map of a composed YAML document (``yaml.compose``); None for an empty document.

        Raises :class:`~stitch.errors.ConfigError` for a key given twice in one mapping.
        """
        source = cls(file)
        if root is not None:
            _node_lines(root, (), source.lines, file)
        return source

    def _known(self, path: tuple) -> tuple:
        """``path`` or its deepest ancestor present in the map."""
        path = tuple(path)
        while path not in self.lines and path:
            path = path[:-1]
        return path

    def line(self, path: tuple) -> int | None:
        """Line of ``path`` or of its deepest ancestor present in the file."""
        return self.lines.get(self._known(path))

    def file_of(self, path: tuple) -> str:
        """The file (or ``command line``) the value at ``path`` (or its deepest known ancestor)
        came from."""
        return self.files.get(self._known(path), self.file)

    def error(self, path: tuple, message: str) -> ConfigError:
        """A :class:`~stitch.errors.ConfigError` placed at ``path`` (file, line and YAML path)."""
        return ConfigError(message, self.file_of(path), self.line(path), format_path(path))

    def drop(self, prefix: tuple) -> None:
        """Forget ``prefix`` and every path below it (a value replaced as a whole)."""
        n = len(prefix)
        for path in [p for p in self.lines if p[:n] == prefix]:
            del self.lines[path]
            self.files.pop(path, None)

    def place(self, path: tuple, file: str, line: int | None) -> None:
        """Record that the value at ``path`` came from ``file`` (at ``line``, if it has one)."""
        self.lines[path] = line
        if file == self.file:
            self.files.pop(path, None)
        else:
            self.files[path] = file

    def take(self, other: SourceMap, prefix: tuple) -> None:
        """Copy the places of ``prefix`` and every path below it from ``other``."""
        n = len(prefix)
        for path, line in other.lines.items():
            if path[:n] == prefix:
                self.place(path, other.file_of(path), line)


def _node_lines(node: yaml.Node, path: tuple, out: dict[tuple, int | None], file: str = "") -> None:
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

"""Bounds on an experiment file before its YAML is built into Python objects.

``yaml.safe_load`` never runs code, but it can be made to exhaust the machine: a 1 KB file of
nested aliases ("billion laughs") expands to billions of nodes, an alias inside its own anchor
(``x: &a [*a]``) builds a cyclic object that later code recurses into forever, and a few
thousand nested brackets overflow Python's stack inside the parser. PyYAML has no limits of its
own, so the node graph that ``yaml.compose`` returns (aliases are shared nodes there, nothing is
expanded yet) is measured here first, without recursion: its nesting depth, whether a node
contains itself, and the number of nodes the aliases would expand to. Files are read as UTF-8
only.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from stitch.errors import ConfigError

#: deepest nesting an experiment file may have (the schema's deepest path is under 10)
MAX_DEPTH = 64
#: most nodes the file may expand to, aliases counted each time they are used
MAX_NODES = 100_000


def read_utf8(path: Path) -> str:
    """The text of ``path``; a file that is not UTF-8 is a one-line :class:`ConfigError`."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8",
            str(path),
            line,
        ) from None


def compose_bounded(text: str, file: str) -> yaml.Node | None:
    """``yaml.compose(text)`` with the bounds of this module checked; one-line errors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise ConfigError(
            f"nested too deeply for a YAML parser (over {MAX_DEPTH} levels are refused); flatten it", file
        ) from None
    if root is not None:
        check_node_graph(root, file)
    return root


def check_node_graph(root: yaml.Node, file: str) -> None:
    """Raise a :class:`ConfigError` when the node graph nests deeper than :data:`MAX_DEPTH`,
    contains a cycle (an alias inside its own anchor), or expands to more than :data:`MAX_NODES`
    nodes. Iterative, so it cannot overflow the stack itself."""
    expanded: dict[int, int] = {}  # id(node) -> nodes it expands to, itself included
    height: dict[int, int] = {}  # id(node) -> levels it spans, itself included
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            total = 1 + sum(expanded[id(child)] for child in children(node))
            if total > MAX_NODES:
                raise ConfigError(
                    f"expands to more than {MAX_NODES:,} values (nested aliases?); write the values out",
                    file,
                    node.start_mark.line + 1,
                )
            expanded[key] = total
            height[key] = 1 + max((height[id(child)] for child in children(node)), default=0)
            continue
        if key in on_path:
            raise ConfigError(
                "an alias refers to the anchor it is inside (a value that contains itself)",
                file,
                node.start_mark.line + 1,
            )
        if depth + height.get(key, 1) - 1 > MAX_DEPTH:  # an alias reused deeper than its anchor counts too
            raise ConfigError(
                f"nested more than {MAX_DEPTH} levels deep; flatten it", file, node.start_mark.line + 1
            )
        if key in expanded:
            continue
        on_path.add(key)
        stack.append((node, depth, True))
        for child in children(node):
            stack.append((child, depth + 1, False))


def children(node: yaml.Node) -> list[yaml.Node]:
    """The nodes directly inside ``node`` (keys and values of a mapping)."""
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []

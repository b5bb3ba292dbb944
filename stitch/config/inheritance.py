"""``extends: base.yaml`` (or ``_base_:``): an experiment file built on other files.

The base's path is relative to the file that names it; a list of bases is merged in order. The
bases are read first (each may extend others), then the file itself is merged over them:
mappings merge key by key, any other value (a list too) replaces the base's. A file reached
again through its own bases is a cycle, reported on one line with the chain of files.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stitch.config.reading import read_mapping
from stitch.config.source import SourceMap
from stitch.config.yaml_limits import read_utf8

#: the keys that name base files (``_base_`` as in mmdetection's configs)
EXTENDS_KEYS = ("extends", "_base_")


@dataclass
class Composed:
    """An experiment file merged over its bases: the raw data (not yet schema-checked), where
    each value came from, and the base files read (in the order they were merged)."""

    data: dict[str, Any]
    source: SourceMap
    bases: list[str] = field(default_factory=list)


def compose(text: str, file: str, folder: Path, own_path: Path | None = None) -> Composed:
    """Read the experiment YAML ``text`` of ``file`` and merge it over its bases (paths
    relative to ``folder``). ``own_path``: the file itself, when there is one, so a base that
    extends it again is reported as a cycle."""
    own = own_path.resolve() if own_path is not None else None
    return _compose(text, file, folder, own, [(file, own)] if own else [])


def _compose(
    text: str, file: str, folder: Path, own: Path | None, chain: list[tuple[str, Path | None]]
) -> Composed:
    data, source = read_mapping(text, file)
    key, refs = _base_refs(data, source)
    if not refs:
        return Composed(data, source)
    merged: dict[str, Any] = {}
    merged_source = SourceMap(file)
    bases: list[str] = []
    for ref in refs:
        shown = os.path.normpath(folder / Path(ref).expanduser())
        path = Path(shown).resolve()
        if any(seen == path for _, seen in chain):
            names = [name for name, _ in chain] + [shown]
            start = next(i for i, (_, seen) in enumerate(chain) if seen == path)
            raise source.error(
                (key,),
                f"a cycle of base files: {' -> '.join(names[start:])} (a file cannot extend itself, "
                "directly or through its bases)",
            )
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise source.error((key,), f"base file {ref!r} {what} ({shown}; the path is relative to {file})")
        base = _compose(read_utf8(path), shown, Path(shown).parent, path, [*chain, (shown, path)])
        merge(merged, merged_source, base.data, base.source)
        bases += [shown, *base.bases]
    merge(merged, merged_source, data, source)
    merged_source.place((), file, source.line(()))
    return Composed(merged, merged_source, bases)


def _base_refs(data: dict[str, Any], source: SourceMap) -> tuple[str, list[str]]:
    """Take ``extends:`` / ``_base_:`` out of ``data``: the key used and the base paths."""
    given = [k for k in EXTENDS_KEYS if k in data]
    if not given:
        return "", []
    if len(given) > 1:
        raise source.error((given[1],), "give the base files once, as 'extends:' or '_base_:', not both")
    key = given[0]
    value = data.pop(key)
    refs = value if isinstance(value, list) else [value]
    if not refs or not all(isinstance(r, str) and r.strip() for r in refs):
        raise source.error(
            (key,), "a base file's path (or a list of them), relative to this file, e.g. extends: base.yaml"
        )
    return key, refs


def merge(into: dict[str, Any], into_source: SourceMap, data: dict[str, Any], source: SourceMap) -> None:
    """Merge ``data`` (placed by ``source``) over ``into`` (placed by ``into_source``): a mapping
    over a mapping merges key by key, anything else replaces the value, its places with it."""
    _merge(into, into_source, data, source, ())


def _merge(
    into: dict[str, Any], into_source: SourceMap, data: dict[str, Any], source: SourceMap, prefix: tuple
) -> None:
    for key, value in data.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into_source.place(path, source.file_of(path), source.line(path))
            _merge(into[key], into_source, value, source, path)
        else:
            into[key] = copy.deepcopy(value)
            into_source.drop(path)
            into_source.take(source, path)

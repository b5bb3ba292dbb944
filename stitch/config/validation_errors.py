"""Pydantic validation errors as one line each: the YAML path of the mistake and what is wrong there.

Pydantic's error locations include the tags of discriminated unions (``data.nuclei.tile``);
:func:`data_path` keeps only the parts present in the file. Unknown keys and values outside a
``Literal`` get the closest valid names (``did you mean``), found by walking the schema along the
error's location.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from stitch.config.base import NAME_PATTERN
from stitch.config.schema import ExperimentCfg
from stitch.errors import did_you_mean


def data_path(loc: tuple, data: Any) -> tuple:
    """Keep the parts of a pydantic ``loc`` that exist in the data (drops union tags)."""
    out: list = []
    cur = data
    for part in loc:
        in_dict = isinstance(cur, dict) and part in cur
        if in_dict or (isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)):
            out.append(part)
            cur = cur[part]
    return tuple(out)


def _unwrap(annotation: Any, value: Any) -> Any:
    """The pydantic model (or Literal) an annotation stands for, given the value found there."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0], value)
    if origin in (Union, types.UnionType):
        members = [_unwrap(a, value) for a in typing.get_args(annotation) if a is not type(None)]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if len(models) > 1 and isinstance(value, dict):
            for m in models:
                tag = m.model_fields.get("dataset")
                if tag is not None and value.get("dataset") in typing.get_args(tag.annotation):
                    return m
            return None
        if models:
            return models[0]
        lits = [m for m in members if typing.get_origin(m) is Literal]
        return lits[0] if lits else (members[0] if len(members) == 1 else None)
    return annotation


def _schema_at(loc: tuple, data: Any) -> Any:
    """Walk the schema along a pydantic ``loc``; returns a model class, a Literal, or None.

    Parts that are not fields (discriminated-union tags) are skipped; the data found along the
    way picks the member of a union.
    """
    node: Any = ExperimentCfg
    cur = data
    for part in loc:
        node = _unwrap(node, cur)
        if isinstance(node, type) and issubclass(node, BaseModel) and isinstance(part, str):
            f = node.model_fields.get(part)
            if f is None:
                continue  # a union tag such as 'nuclei'
            node = f.annotation
        elif typing.get_origin(node) in (list, tuple) and isinstance(part, int):
            node = typing.get_args(node)[0]
        else:
            return None
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            cur = cur[part]
        else:
            cur = None
    return _unwrap(node, cur)


def _literal_choices(node: Any) -> list[str]:
    """The values of a ``Literal`` as text ([] for anything else)."""
    if typing.get_origin(node) is Literal:
        return [str(a) for a in typing.get_args(node)]
    return []


def describe_error(err: ErrorDetails, data: Any) -> tuple[tuple, str]:
    """The YAML path and the one-line message of one pydantic error (an item of ``errors()``)
    found when validating ``data`` (the loaded YAML) against :class:`ExperimentCfg`."""
    loc = tuple(err["loc"])
    path = data_path(loc, data)
    kind = err["type"]
    if kind == "extra_forbidden":
        key = loc[-1]
        parent = _schema_at(loc[:-1], data)
        allowed = (
            list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        )
        hint = did_you_mean(str(key), allowed) or (f" (allowed: {', '.join(allowed)})" if allowed else "")
        return path, f"unknown key {key!r}{hint}"
    if kind == "missing":
        return path, f"required key {loc[-1]!r} is missing"
    if kind in ("literal_error", "enum"):
        choices = _literal_choices(_schema_at(loc, data))
        got = err.get("input")
        msg = f"{got!r} is not one of {', '.join(choices)}" if choices else err["msg"]
        if got == "nest" and path[-1:] == ("mode",):
            nesting = (
                " — nesting is written as a 'nest:' list of insertions inside the host insertion (see README)"
            )
            return path, msg + nesting
        return path, msg + (did_you_mean(got, choices) if choices else "")
    if kind == "union_tag_invalid":
        tags = err.get("ctx", {}).get("expected_tags", "")
        got = err.get("ctx", {}).get("tag")
        choices = [t.strip(" '") for t in str(tags).split(",")]
        message = f"unknown dataset {got!r}, expected one of {tags}" + did_you_mean(str(got), choices)
        return (*path, "dataset"), message
    if kind == "union_tag_not_found":
        return path, "needs a 'dataset:' key (nuclei, shapes, folder, voc, coco or brain)"
    got = err.get("input")
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NAME_PATTERN:
        message = (
            "a name starts with a letter or digit and holds only letters, digits, _ . and -"
            " (it names table rows, files and folders)"
        )
    elif kind == "model_type":
        message = "should be a mapping of keys (key: value lines, or {key: value})"
    else:
        message = err["msg"].removeprefix("Value error, ").rstrip(".")
    if isinstance(got, (dict, list)) or kind == "value_error":
        return path, message
    return path, f"{message} (got {short_repr(got)})"


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters with ``...`` and the full length of a long string
    (a 300-character name is quoted as its start, not in full)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f", {len(value)} characters" if isinstance(value, str) else ""
    return f"{text[: limit - 3]}...{size}"

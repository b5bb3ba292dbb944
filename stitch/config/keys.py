"""Every key path of the experiment schema, derived from the pydantic models (for docs and tests).

A key path is dotted, with ``[]`` for the items of a list of blocks: ``train.optimizer.lr``,
``insertions[].nest[].module``, ``sweep.slots[].args``. Every key of every block is listed, the
blocks themselves included (``train``, ``train.optimizer``). Keys whose value is a free mapping
(``baseline.args``, ``sweep.train``, ``sweep.slots[].args``) are not looked into. The ``data:``
keys are those of every dataset together (``data.tile`` comes from ``nuclei``);
:func:`data_keys_by_dataset` tells them apart. A block nested in itself (``nest``) is listed
once: ``insertions[].nest[].nest`` is a key, its items are not expanded again.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any, Union

from pydantic import BaseModel

from stitch.config.schema import ExperimentCfg
from stitch.config.schema_data import DataCfg


def schema_keys(leaves_only: bool = False) -> set[str]:
    """Every key path of an experiment file (see the module docstring for the format).

    With ``leaves_only``, only the keys with no keys below them (``train.optimizer.lr`` but not
    ``train.optimizer``, nor ``sweep.objectives``, whose items may be blocks).
    """
    keys: dict[str, bool] = {}  # key -> whether it is a block with keys of its own
    _collect(ExperimentCfg, "", (ExperimentCfg,), keys)
    return {k for k, block in keys.items() if not (leaves_only and block)}


def data_keys_by_dataset() -> dict[str, set[str]]:
    """The ``data.*`` key paths each dataset takes, by its ``dataset:`` name (e.g. ``nuclei``)."""
    out: dict[str, set[str]] = {}
    for _, model in _blocks_below(DataCfg, "data"):
        keys: dict[str, bool] = {}
        _collect(model, "data", (model,), keys)
        for name in typing.get_args(model.model_fields["dataset"].annotation):
            out[name] = set(keys)
    return out


def _collect(model: type[BaseModel], prefix: str, ancestors: tuple[type, ...], keys: dict[str, bool]) -> None:
    """Add the key paths of ``model``'s fields (and of the blocks below them) under ``prefix``."""
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        keys.setdefault(key, False)
        for suffix, block in _blocks_below(info.annotation, key):
            keys[key] = True
            if block not in ancestors:
                _collect(block, suffix, (*ancestors, block), keys)


def _blocks_below(annotation: Any, key: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """The schema blocks a field's value can be, each with its key path (``key[]`` for list items)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        yield from _blocks_below(typing.get_args(annotation)[0], key)
    elif origin in (Union, types.UnionType):
        for member in typing.get_args(annotation):
            yield from _blocks_below(member, key)
    elif origin is list:
        yield from _blocks_below(typing.get_args(annotation)[0], f"{key}[]")
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield key, annotation

"""One YAML file's text -> its mapping and the line of every YAML path, with one-line errors.

``yaml.safe_load`` gives the data and ``yaml.compose`` (same safe loader, bounded by
:mod:`stitch.config.yaml_limits`) gives the node tree the :class:`SourceMap` is read from.
"""

from __future__ import annotations

from typing import Any

import yaml

from stitch.config.source import SourceMap
from stitch.config.yaml_limits import compose_bounded
from stitch.errors import ConfigError


def read_mapping(text: str, file: str) -> tuple[dict[str, Any], SourceMap]:
    """The mapping of experiment YAML ``text`` (from ``file``) and its :class:`SourceMap`;
    raises :class:`ConfigError` for text that is not YAML or not a mapping."""
    try:
        root = compose_bounded(text, file)  # depth, cycles and alias expansion bounded first
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if (
            isinstance(exc, yaml.constructor.ConstructorError)
            and "could not determine a constructor" in problem
        ):
            problem += " (YAML tags such as !!python/... are not allowed: write plain values)"
        raise ConfigError(f"not valid YAML: {problem}", file, mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise ConfigError("the experiment file must be a YAML mapping (name:, task:, baseline: …)", file, 1)
    return data, SourceMap.from_node(root, file)

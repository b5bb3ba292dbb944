"""Experiments as YAML text: the composed file a run directory keeps, and the resolved experiment.

:func:`composed_yaml` writes an experiment merged from its base files and command-line overrides
as one plain file (what ``experiment.yaml`` of a run directory holds, so ``stitch report`` reads
what was run); :func:`resolved_yaml` writes the schema-checked experiment with every default
filled (``stitch config``). Both load back to the same experiment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from stitch.config.schema import ExperimentCfg


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120, allow_unicode=True)


def _comment(text: str) -> str:
    return "# " + " ".join(text.split())


def composed_yaml(data: dict[str, Any], file: str, bases: Sequence[str], overrides: Sequence[str]) -> str:
    """The raw data of an experiment composed from ``file``, its ``bases`` and ``overrides``, as
    the YAML of one experiment file, headed by comments saying where it came from."""
    lines = [_comment(f"{file}, composed by stitch")]
    if bases:
        lines.append(_comment("bases: " + ", ".join(bases)))
    if overrides:
        lines.append(_comment("command line: " + " ".join(overrides)))
    order = list(ExperimentCfg.model_fields)  # the schema's order: name and task first
    ordered = dict(sorted(data.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    return "\n".join(lines) + "\n" + _dump(ordered)


def resolved_data(cfg: ExperimentCfg) -> dict[str, Any]:
    """Every key of the experiment, defaults filled, as plain data (``train.precision`` only
    when given: whether it was given is part of the check of ``amp`` beside it)."""
    data = cfg.model_dump(mode="json")
    if "precision" not in cfg.train.model_fields_set:
        del data["train"]["precision"]
    return data


def resolved_yaml(cfg: ExperimentCfg) -> str:
    """The experiment with every default filled, as YAML (what ``stitch config`` prints)."""
    return _dump(resolved_data(cfg))

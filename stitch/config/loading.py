"""Reading an experiment: YAML text or file -> schema-checked :class:`Experiment`, and overrides.

Loading is two steps. ``yaml.safe_load`` gives the data and ``yaml.compose`` (same safe loader)
gives the node tree, from which every YAML path gets its line number (:class:`SourceMap`). The
data is then checked by the pydantic schema (:class:`ExperimentCfg`); the first error in file
order becomes one line naming the file, the line, the YAML path and, where the value is one of a
known set, the closest valid names. Checks across keys follow (:func:`check_cross_fields`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from stitch.config.checks import check_cross_fields
from stitch.config.schema import ExperimentCfg
from stitch.config.schema_sweep import SweepCfg
from stitch.config.source import SourceMap, format_path
from stitch.config.validation_errors import data_path, describe_error, short_repr
from stitch.config.yaml_limits import compose_bounded, read_utf8
from stitch.errors import ConfigError


@dataclass
class Experiment:
    """A loaded, schema-checked experiment and where each of its values came from."""

    cfg: ExperimentCfg
    source: SourceMap
    path: Path | None = None
    #: the folder relative paths in the file (``plugins:``, ``file.py:Name``) are resolved against
    base_dir: Path | None = None

    @property
    def name(self) -> str:
        """The experiment's ``name:``."""
        return self.cfg.name


def parse_experiment(text: str, file: str = "<string>") -> Experiment:
    """Parse and schema-check experiment YAML text; raises :class:`ConfigError`."""
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
    source = SourceMap.from_node(root, file)
    try:
        cfg = ExperimentCfg.model_validate(data)
    except ValidationError as exc:
        # the first error in file order; an unknown key before a missing one (often its typo)
        errors = sorted(
            exc.errors(),
            key=lambda e: (
                source.line(data_path(tuple(e["loc"]), data)) or 0,
                e["type"] != "extra_forbidden",
            ),
        )
        path, message = describe_error(errors[0], data)
        if path[:1] == ("insertions",) and len(path) > 1 and isinstance(data.get("insertions"), list):
            item = data["insertions"][path[1]]
            if isinstance(item, dict) and item.get("name") and path[2:] != ("name",):
                message = f"insertion {item['name']!r}: {message}"
        more = (
            f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        )
        raise source.error(path, message + more) from None
    check_cross_fields(cfg, source)
    return Experiment(cfg=cfg, source=source)


def with_overrides(
    exp: Experiment, baseline_args: dict[str, Any] | None = None, probe_size: tuple[int, int] | None = None
) -> Experiment:
    """A re-validated copy of ``exp`` with command-line overrides (``--arg``, ``--size``)."""
    data = exp.cfg.model_dump()  # every value, also those changed on the objects after loading
    if "precision" not in exp.cfg.train.model_fields_set:
        # left unset, as in the file: the check of amp beside precision asks whether it was given
        del data["train"]["precision"]
    data["baseline"]["args"].update(baseline_args or {})
    if probe_size is not None:
        data["probe"]["image_size"] = list(probe_size)
    try:
        cfg = ExperimentCfg.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(
            f"{format_path(tuple(err['loc']))}: {err['msg']} (got {short_repr(err.get('input'))})",
            "command line",
        ) from None
    return Experiment(cfg=cfg, source=exp.source, path=exp.path, base_dir=exp.base_dir)


def load_experiment(path: str | Path) -> Experiment:
    """Read and schema-check an experiment file (model-side checks come in :mod:`stitch.validate`)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError("is a folder, not an experiment file (name the .yaml file in it)", str(p))
    if not p.is_file():
        raise ConfigError(
            "no such experiment file (check the path; `ls experiments/` lists the examples)", str(p)
        )
    exp = parse_experiment(read_utf8(p), str(p))
    exp.path = p
    exp.base_dir = source_folder(p)
    return exp


#: In a run directory, the folder the experiment file was copied from: its path relative to the
#: run directory (so a project folder moved or copied with its runs still works), then its
#: absolute path, one per line. Relative plugin paths of the copy ``experiment.yaml`` resolve
#: against the first of them that exists.
SOURCE_FOLDER_FILE = "experiment-folder.txt"


def source_folder(path: Path) -> Path:
    """The folder relative paths in the experiment file ``path`` are resolved against: the one
    recorded next to it in :data:`SOURCE_FOLDER_FILE` (a run directory's copy), else its own."""
    note = path.parent / SOURCE_FOLDER_FILE
    if note.is_file():
        recorded = [line.strip() for line in note.read_text(encoding="utf-8").splitlines() if line.strip()]
        candidates = [(path.parent / line).resolve() for line in recorded]
        for folder in candidates:
            if folder.is_dir():
                return folder
        if candidates:
            return candidates[0]
    return path.parent.resolve()


def sweep_of(exp: Experiment) -> SweepCfg:
    """The experiment's ``sweep:`` block, or a one-line error when it has none."""
    if exp.cfg.sweep is None:
        raise exp.source.error(
            ("sweep",), "the experiment has no 'sweep:' block; add one (README: stitch sweep)"
        )
    return exp.cfg.sweep

"""Reading an experiment: YAML text or file -> schema-checked :class:`Experiment`, and overrides.

Loading is three steps. The file is read with its line numbers (:mod:`~stitch.config.reading`)
and merged over its ``extends:`` bases (:mod:`~stitch.config.inheritance`); command-line
``key.path=value`` overrides are set in that raw mapping (:mod:`~stitch.config.overrides`).
The data is then checked by the pydantic schema (:class:`ExperimentCfg`); the first error in file
order becomes one line naming the file (or ``command line``), the line, the YAML path and, where
the value is one of a known set, the closest valid names. Checks across keys follow
(:func:`check_cross_fields`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stitch.config.checks import check_cross_fields
from stitch.config.inheritance import Composed, compose
from stitch.config.overrides import apply_overrides
from stitch.config.schema import ExperimentCfg
from stitch.config.schema_sweep import SweepCfg
from stitch.config.source import SourceMap, format_path
from stitch.config.validation_errors import data_path, describe_error, short_repr
from stitch.config.writing import composed_yaml
from stitch.config.yaml_limits import read_utf8
from stitch.errors import ConfigError


@dataclass
class Experiment:
    """A loaded, schema-checked experiment and where each of its values came from."""

    cfg: ExperimentCfg
    source: SourceMap
    path: Path | None = None
    #: the folder relative paths in the file (``plugins:``, ``file.py:Name``) are resolved against
    base_dir: Path | None = None
    #: the experiment as one YAML file when it is not the file at ``path`` as written (merged
    #: over ``extends:`` bases, or with command-line overrides): what a run directory keeps
    text: str | None = None

    @property
    def name(self) -> str:
        """The experiment's ``name:``."""
        return self.cfg.name


def parse_experiment(
    text: str, file: str = "<string>", overrides: Sequence[str] = (), folder: Path | None = None
) -> Experiment:
    """Parse and schema-check experiment YAML text; raises :class:`ConfigError`.

    Its ``extends:`` bases are merged under it first (paths relative to ``folder``, by default
    the folder of ``file``), then the command-line ``overrides`` (``key.path=value``) are set."""
    composed = compose(text, file, folder if folder is not None else Path(file).parent)
    return _checked(composed, file, overrides, None)


def _checked(composed: Composed, file: str, overrides: Sequence[str], own: Path | None) -> Experiment:
    """The composed data with the overrides set, schema-checked; its text when it differs from
    the file ``own`` as written."""
    apply_overrides(composed.data, composed.source, overrides)
    exp = experiment_from_data(composed.data, composed.source)
    if composed.bases or overrides:
        exp.text = composed_yaml(composed.data, file, composed.bases, overrides)
    return exp


def experiment_from_data(data: dict[str, Any], source: SourceMap) -> Experiment:
    """Schema-check the raw mapping of an experiment (placed by ``source``); raises a one-line
    :class:`ConfigError` at the first mistake in file order."""
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
    return Experiment(cfg=cfg, source=exp.source, path=exp.path, base_dir=exp.base_dir, text=exp.text)


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Read and schema-check an experiment file, merged over its ``extends:`` bases and with the
    command-line ``overrides`` set (model-side checks come in :mod:`stitch.validate`)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError("is a folder, not an experiment file (name the .yaml file in it)", str(p))
    if not p.is_file():
        raise ConfigError(
            "no such experiment file (check the path; `ls experiments/` lists the examples)", str(p)
        )
    exp = _checked(compose(read_utf8(p), str(p), p.parent, p), str(p), overrides, p)
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

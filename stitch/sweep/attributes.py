"""What stitch writes in its Optuna studies for people (optuna-dashboard, ``optuna.load_study``) and
what it keeps for itself.

- For people: the study's metric names (``val fg_iou``, never "Objective 0") and user attributes
  (experiment, its file, design, objectives, stitch version, git commit when the experiment's
  directory is a git work tree); a trial's readable user attributes (its insertions, run id,
  status, the reason it was pruned or failed).
- For stitch: bookkeeping (the claim of a configuration, a run's stored row, the experiment YAML
  that ``best.yaml`` is written from, a shared study's plan) in system attributes under
  ``stitch:<key>``. Readers look there first, then in the user attributes, where studies written
  before kept them, so those studies keep resuming.
"""

from __future__ import annotations

import re
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial

from stitch import __version__

#: the prefix of every system attribute stitch writes (Optuna's own have none, or their own)
PREFIX = "stitch:"
_COMMIT = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")


def git_commit(directory: Path | None) -> str | None:
    """``git rev-parse HEAD`` in ``directory``; None when it is no git work tree, git is missing or
    anything else goes wrong (never an error)."""
    if directory is None:
        return None
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and _COMMIT.fullmatch(commit) else None


def describe_study(study: optuna.Study, metric_names: Sequence[str], attrs: Mapping[str, Any]) -> None:
    """Name the study's objectives and set its user attributes (``None`` values left out); only
    what differs is written, so workers opening one study at once rarely write at all."""
    names = list(metric_names)
    if study.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    known = study.user_attrs
    for key, value in attrs.items():
        if value is not None and known.get(key) != value:
            study.set_user_attr(key, value)


def study_attributes(
    experiment: str, experiment_file: Path | None, design: str, objectives: str, description: str = ""
) -> dict[str, Any]:
    """The user attributes of a study stitch creates (git commit: of the experiment file's folder)."""
    return {
        "experiment": experiment,
        "experiment_file": str(experiment_file) if experiment_file is not None else None,
        "description": description or None,
        "design": design,
        "objectives": objectives,
        "stitch_version": __version__,  # the one version string (stitch/__init__.py)
        "git_commit": git_commit(experiment_file.parent if experiment_file is not None else None),
    }


def set_trial_bookkeeping(trial: Trial, key: str, value: Any) -> None:
    """Store ``value`` (JSON) as the trial's system attribute ``stitch:<key>``. Optuna 4+ has no
    ``Trial.set_system_attr``; its storage's ``set_trial_system_attr`` is public and takes the
    trial's id, found here from the study and the trial's number (both public)."""
    storage = trial.storage
    study_id = storage.get_study_id_from_name(trial.study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    storage.set_trial_system_attr(trial_id, PREFIX + key, value)


def bookkeeping(trial: FrozenTrial, key: str, default: Any = None) -> Any:
    """A trial's bookkeeping value ``key``: its system attribute, else (a study written before
    bookkeeping moved there) its user attribute, else ``default``."""
    if PREFIX + key in trial.system_attrs:
        return trial.system_attrs[PREFIX + key]
    return trial.user_attrs.get(key, default)


def set_study_bookkeeping(storage: optuna.storages.BaseStorage, study_id: int, key: str, value: Any) -> None:
    """Store ``value`` (JSON) as the study's system attribute ``stitch:<key>``."""
    storage.set_study_system_attr(study_id, PREFIX + key, value)


def study_bookkeeping(storage: optuna.storages.BaseStorage, study_id: int, key: str) -> Any:
    """A study's bookkeeping value ``key``: its system attribute, else (written before) its user
    attribute, else None."""
    system = storage.get_study_system_attrs(study_id)
    if PREFIX + key in system:
        return system[PREFIX + key]
    return storage.get_study_user_attrs(study_id).get(key)

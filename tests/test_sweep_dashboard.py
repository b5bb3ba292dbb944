"""What optuna-dashboard (or ``optuna.load_study``) shows of stitch's studies: metric names, study
attributes, readable trial attributes, bookkeeping in system attributes (studies written before,
with it in user attributes, still resume), and no importance plot that would mean nothing."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from yaml_snippets import TINY_UNET, tiny_shapes_unet

from stitch import __version__
from stitch.cli import main
from stitch.config import load_experiment
from stitch.errors import StitchError
from stitch.plan import Variant
from stitch.run_queue import PLACEHOLDER_METRIC, ended_well, open_shared_runs
from stitch.runs import RunPlan
from stitch.store import ResultStore, RunRow, row_to_json
from stitch.sweep.attributes import git_commit
from stitch.sweep.objectives import Objective
from stitch.sweep.outputs import importances_not_drawn, write_outputs
from stitch.sweep.study import claim_configuration, open_storage

SWEEP = """\
sweep:
  trials: 2
  sampler: grid
  slots:
    - {name: A, at: [enc1], modules: [SE]}
"""


def _old_format(db: Path) -> None:
    """Rewrite a study as stitch wrote it before: bookkeeping in user attributes, no study
    attributes, no metric names."""
    con = sqlite3.connect(db)
    with con:
        con.execute(
            "INSERT INTO trial_user_attributes (trial_id, key, value_json) SELECT trial_id, "
            "substr(key, 8), value_json FROM trial_system_attributes WHERE key LIKE 'stitch:%'"
        )
        con.execute("DELETE FROM trial_system_attributes WHERE key LIKE 'stitch:%'")
        con.execute("DELETE FROM study_user_attributes")
        con.execute("DELETE FROM study_system_attributes WHERE key = 'study:metric_names'")
    con.close()


def test_a_sweep_study_is_readable_in_the_dashboard_and_an_old_format_study_resumes(tmp_path: Path) -> None:
    path = tmp_path / "dash.yaml"
    path.write_text(tiny_shapes_unet("dash", tmp_path / "data", epochs=1) + SWEEP)
    out = tmp_path / "runs"
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--n-trials", "1"]) == 0
    db = out / "dash" / "sweep.sqlite"
    study = optuna.load_study(study_name="dash", storage=f"sqlite:///{db}")
    assert study.metric_names == ["val miou"]  # not "Objective 0"
    attrs = study.user_attrs
    assert attrs["experiment"] == "dash" and attrs["experiment_file"] == str(path)
    assert attrs["objectives"] == "maximize val miou (best epoch)"
    assert (
        attrs["design"].startswith("Optuna sweep (grid sampler")
        and "A: SE at enc1 or none" in attrs["design"]
    )
    assert attrs["stitch_version"] == __version__
    assert "git_commit" not in attrs  # tmp_path is no git work tree: left out, no error
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE
    assert "claim" not in trial.user_attrs and "experiment_yaml" not in trial.user_attrs
    assert trial.system_attrs["stitch:claim"] == "train" and "stitch:experiment_yaml" in trial.system_attrs
    assert trial.user_attrs["status"] == "done" and len(trial.user_attrs["run_id"]) == 16
    assert trial.user_attrs["insertions"] in ("baseline", "A:SE@enc1")
    assert all(isinstance(v, (str, int, float)) and len(str(v)) <= 100 for v in trial.user_attrs.values())

    _old_format(db)  # as written by the stitch before: still resumes, and is described now
    old = optuna.load_study(study_name="dash", storage=f"sqlite:///{db}").get_trials()[0]
    assert old.user_attrs["claim"] == "train" and not old.system_attrs.get("stitch:claim")
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    study = optuna.load_study(study_name="dash", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)  # a resumed grid may repeat a point: reused
    assert {t.user_attrs["insertions"] for t in trials} == {"baseline", "A:SE@enc1"}
    assert study.metric_names == ["val miou"] and study.user_attrs["experiment"] == "dash"
    with ResultStore(out / "dash" / "runs.sqlite") as store:
        assert len(store.rows()) == 2  # the first configuration was not trained again
    assert (out / "dash" / "sweep" / "best.yaml").is_file()


def _exp(tmp_path: Path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_UNET)
    return load_experiment(path)


def _complete(value: float, lr: float, **attrs: object) -> optuna.trial.FrozenTrial:
    return create_trial(
        value=value,
        params={"train.optimizer.lr": lr},
        distributions={"train.optimizer.lr": CategoricalDistribution([0.1, 0.01])},
        user_attrs=attrs,
    )


def test_importances_of_a_constant_objective_are_listed_as_not_drawn(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    old_yaml = "name: tiny\ntask: segmentation\n"  # best.yaml from a study written before: a user attribute
    for lr in (0.1, 0.01, 0.1):
        study.add_trial(_complete(0.5, lr, experiment_yaml=old_yaml))
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "importances.png").write_bytes(b"from an earlier run of the sweep")
    written = write_outputs(study, _exp(tmp_path), out, [Objective("miou", "maximize")])
    note = (out / "plots_not_drawn.txt").read_text()
    assert re.search(r"^importances: the objective is 0\.5 in all 3 complete trials \(constant", note, re.M)
    assert not (out / "importances.png").exists() and (out / "history.png").is_file()
    assert out / "plots_not_drawn.txt" in written
    assert "name: tiny_best" in (out / "best.yaml").read_text()

    one_value = [_complete(v, 0.1) for v in (0.4, 0.5)]
    assert "single value" in (importances_not_drawn(one_value) or "")
    assert importances_not_drawn([_complete(0.4, 0.1), _complete(0.5, 0.01)]) is None
    assert "at least 2" in (importances_not_drawn(one_value[:1]) or "")


def test_claims_are_system_attributes_and_claims_written_before_still_count() -> None:
    study = optuna.create_study()
    running = {"state": TrialState.RUNNING}
    study.add_trial(create_trial(**running, user_attrs={"run_id": "old", "claim": "train"}))  # before
    study.add_trial(
        create_trial(**running, user_attrs={"run_id": "new"}, system_attrs={"stitch:claim": "train"})
    )
    trial = study.ask()
    assert claim_configuration(study, trial, "old")[0] == "being trained"
    assert claim_configuration(study, trial, "new")[0] == "being trained"
    assert claim_configuration(study, trial, "fresh") == ("train", None)
    claimed = study.get_trials()[trial.number]
    assert claimed.system_attrs["stitch:claim"] == "train" and "claim" not in claimed.user_attrs


def _row(run_id: str) -> RunRow:
    return RunRow(run_id, "tiny", "Baseline", "baseline", [], 0, "done", {}, "miou", best_value=0.5)


def test_a_shared_runs_study_is_described_and_reads_bookkeeping_written_before(tmp_path: Path) -> None:
    plans = [RunPlan(Variant("Baseline", ()), seed, f"run{seed}", {}) for seed in (0, 1)]
    exp = _exp(tmp_path)
    shared = open_shared_runs(open_storage(f"sqlite:///{tmp_path / 'new.db'}"), "tiny", plans, exp)
    assert shared.study.metric_names == [PLACEHOLDER_METRIC]
    assert shared.study.user_attrs["experiment_file"] == str(exp.path)
    assert shared.study.user_attrs["experiment"] == "tiny" and "2 runs" in shared.study.user_attrs["design"]
    assert "run_ids" not in shared.study.user_attrs  # bookkeeping: a system attribute

    # a study written before: the plan and a finished run's row in user attributes
    storage = open_storage(f"sqlite:///{tmp_path / 'old.db'}")
    study = optuna.create_study(storage=storage, study_name="tiny:runs")
    study.set_user_attr("run_ids", ["run0", "run1"])
    row = create_trial(
        value=0.0,
        params={"run_id": "run0"},
        distributions={"run_id": CategoricalDistribution(["run0", "run1"])},
        user_attrs={"row": row_to_json(_row("run0"))},
    )
    study.add_trial(row)
    shared = open_shared_runs(storage, "tiny", plans)
    assert list(shared.decided()) == ["run0"] and ended_well(shared.study.get_trials()[0])
    with pytest.raises(StitchError, match="holds another plan"):
        open_shared_runs(storage, "tiny", plans[:1])


def test_the_git_commit_is_found_or_silently_absent(tmp_path: Path) -> None:
    assert git_commit(None) is None and git_commit(tmp_path) is None and git_commit(tmp_path / "gone") is None
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    try:
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not installed")
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(repo) == head and re.fullmatch("[0-9a-f]{40}", head)
    sub = repo / "experiments"
    sub.mkdir()
    assert git_commit(sub) == head

"""One trial of a sweep: suggest its choices, build and probe the variant (a choice that cannot be
stitched is pruned with the reason in its ``invalid`` user attribute and never trains), claim its
configuration across workers, then train it through the same path as ``stitch run`` (or reuse the
run trained before: runs are keyed by their config's hash) and return its objective values.

Its user attributes are what a person reads in optuna-dashboard: ``insertions`` (one short line),
``run_id``, ``status`` (of its run), ``invalid``/``error``/``duplicate_of``/``reused``/``retry_of``
when they apply; the experiment YAML of ``best.yaml`` and the claim are bookkeeping (system
attributes, :mod:`stitch.sweep.attributes`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import torch
from optuna.trial import Trial

from stitch.build import BuiltModel, stitch_variant
from stitch.config import Experiment, sweep_of
from stitch.engine import StopTraining
from stitch.errors import StitchError, one_line_message
from stitch.plan import Variant
from stitch.progress import Progress
from stitch.runs import RunPlan, resolved_config, run_id_of
from stitch.session import RunSession
from stitch.store import ResultStore, RunRow, write_results_csv
from stitch.sweep.attributes import set_trial_bookkeeping
from stitch.sweep.objectives import Objective, objective_values, prunable
from stitch.sweep.pruning import PruneWeakTrial
from stitch.sweep.space import experiment_yaml, insertions_label, suggest, trial_experiment
from stitch.sweep.study import claim_configuration
from stitch.tasks import Task

if TYPE_CHECKING:
    from stitch.data import DataBundle


@dataclass
class TrialObjective:
    """The objective Optuna calls once per trial (``study.optimize(TrialObjective(...))``)."""

    study: optuna.Study
    exp: Experiment  # the sweep's experiment, baseline fitted to the data
    objectives: list[Objective]
    data: DataBundle
    task: Task
    device: torch.device
    run_dir: Path
    progress: Progress

    @property
    def epochs(self) -> int:
        """Epochs of a trial (``sweep.epochs``, else ``train.epochs``): the pruner's last step."""
        return sweep_of(self.exp).epochs or self.exp.cfg.train.epochs

    def __call__(self, trial: Trial) -> float | tuple[float, ...]:
        try:
            return self._evaluate(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # failed with an error, not interrupted: retried once only
            trial.set_user_attr("error", one_line_message(exc)[:1000])
            raise

    def _evaluate(self, trial: Trial) -> float | tuple[float, ...]:
        """Build, claim and train (or reuse) the trial's configuration; its objective values."""
        retry_of = trial.user_attrs.get("retry_of")
        if retry_of is not None and any(
            t.user_attrs.get("retry_of") == retry_of and t.number < trial.number
            for t in self.study.get_trials(deepcopy=False)
        ):  # two workers enqueued a retry of the same trial at once: only the first runs
            raise optuna.TrialPruned(f"duplicate retry of trial {retry_of}")
        texp, variant, built = self._build(trial)
        seed = sweep_of(self.exp).seed
        config = resolved_config(texp, variant, seed, texp.cfg.train.epochs)
        run_id = run_id_of(config)
        trial.set_user_attr("run_id", run_id)
        set_trial_bookkeeping(  # best.yaml is written from it; too long to read in a dashboard
            trial,
            "experiment_yaml",
            experiment_yaml(texp.cfg.model_dump(mode="json", exclude={"sweep"})),
        )
        decision, other = claim_configuration(self.study, trial, run_id)
        if decision == "reuse":
            trial.set_user_attr("reused", run_id)
            return other.values[0] if len(other.values) == 1 else tuple(other.values)
        if decision != "train":
            trial.set_user_attr("duplicate_of", other.number)
            raise optuna.TrialPruned(f"the same configuration is {decision} in trial {other.number}")
        row = self._train_or_reuse(trial, texp, RunPlan(variant, seed, run_id, config), built)
        trial.set_user_attr("status", row.status)
        if row.status == "diverged":
            raise optuna.TrialPruned(f"diverged: {row.error}")
        if row.status != "done":
            raise RuntimeError(f"run {run_id[:8]} {row.status}: {row.error}")
        values = objective_values(row, self.objectives, texp, variant, seed)
        listed = values if isinstance(values, tuple) else (values,)
        if any(math.isnan(v) for v in listed):
            undefined = dict(zip([o.metric for o in self.objectives], listed))
            raise optuna.TrialPruned(f"an objective is undefined (NaN): {undefined}")
        return values

    def _build(self, trial: Trial) -> tuple[Experiment, Variant, BuiltModel]:
        """The trial's experiment, variant and model (the dry run: anything that cannot be
        stitched prunes the trial here, before any training)."""
        insertions, train = suggest(trial, sweep_of(self.exp))
        trial.set_user_attr("insertions", insertions_label(insertions))
        try:
            label = f"{self.exp.path or self.exp.cfg.name} (trial {trial.number})"
            texp = trial_experiment(self.exp, insertions, train, label)
            variant = Variant(
                f"trial {trial.number}" if insertions else "Baseline", tuple(i["name"] for i in insertions)
            )
            built = stitch_variant(texp, variant, sweep_of(self.exp).seed)
        except StitchError as exc:
            reason = one_line_message(exc)
            trial.set_user_attr("invalid", reason)
            self.progress.message(f"trial {trial.number}: not stitchable, pruned without training: {reason}")
            raise optuna.TrialPruned(reason) from None
        return texp, variant, built

    def _train_or_reuse(self, trial: Trial, texp: Experiment, plan: RunPlan, built: BuiltModel) -> RunRow:
        """Train the run (or resume it: unfinished, or pruned in another study), or reuse it when it
        was trained before; a configuration that diverged before prunes the trial."""
        with ResultStore(self.run_dir / "runs.sqlite") as store:
            row = store.get(plan.run_id)
            if row is not None and row.status == "diverged":
                trial.set_user_attr("reused", plan.run_id)
                raise optuna.TrialPruned(f"the same configuration diverged before ({row.error})")
            if row is not None and row.status == "done":
                trial.set_user_attr("reused", plan.run_id)
                self.progress.message(
                    f"trial {trial.number}: configuration trained before "
                    f"(run {plan.run_id[:8]}), result reused"
                )
                return row
            session = RunSession(texp, self.data, self.task, store, self.device, self.run_dir, self.progress)
            pruning = (
                [PruneWeakTrial(trial, self.objectives[0].metric, self.epochs)]
                if prunable(self.objectives)
                else []
            )
            try:
                # the search chooses on val: trials never evaluate the held-out test split
                return session.train(plan, callbacks=pruning, built=built, test=False)
            except StopTraining as exc:
                raise optuna.TrialPruned(exc.reason) from None
            finally:
                write_results_csv(store, self.run_dir / "results.csv", {plan.run_id})

"""``run_sweep``: open (or continue) the study and run trials until the requested number of
distinct configurations have been decided (:mod:`stitch.sweep.distinct`), then write the sweep's
outputs and its runs table. The study carries its metric names and a description for
optuna-dashboard (:mod:`stitch.sweep.attributes`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from stitch.compile_model import check_compile
from stitch.config import Experiment, sweep_of
from stitch.devices import pick_device
from stitch.errors import StitchError, one_line_message
from stitch.progress import Progress
from stitch.registry import PRUNERS, SAMPLERS
from stitch.report import write_runs_table
from stitch.run_lock import open_locked_run_dir
from stitch.runs import experiment_data, preflight, run_logger
from stitch.sweep.attributes import describe_study, study_attributes
from stitch.sweep.check import check_sweep
from stitch.sweep.distinct import distinct_finished, next_unevaluated
from stitch.sweep.objectives import (
    Objective,
    describe_objectives,
    describe_sweep,
    objectives_of,
    prunable,
)
from stitch.sweep.outputs import write_outputs
from stitch.sweep.samplers import sampler_seed
from stitch.sweep.space import configurations, grid_size
from stitch.sweep.study import (
    count,
    fail_dead_trials,
    fail_stale_trials,
    open_storage,
    retry_failed_trials,
    trials_in,
)
from stitch.sweep.trial import TrialObjective
from stitch.tasks import make_task

#: how often a worker whose remaining trials run elsewhere looks again, and when it gives up on failures
WAIT_SECONDS = 5
MAX_FAILURES_IN_A_ROW = 3
#: trials in a row that decide no new configuration before one the sampler left out is proposed
#: (finite spaces), and before an unbounded search stops
REPEATS_BEFORE_PROPOSING = 3
MAX_REPEATS_IN_A_ROW = 20


@dataclass
class SweepResult:
    """The study a sweep ran, its run directory and the files it wrote in ``RUN_DIR/sweep/``."""

    study: optuna.Study
    run_dir: Path
    written: list[Path]


def run_sweep(
    exp: Experiment,
    out: str | Path = "runs",
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    device: str | None = None,
    quiet: bool = False,
    wait: bool = False,
) -> SweepResult:
    """Run trials until ``n_trials`` (default ``sweep.trials``) distinct configurations have been
    decided (complete or pruned) in the study; a finite space smaller than that is run to its end.
    The run directory is locked meanwhile: another process working in it is refused, or with
    ``wait`` waited for."""
    sweep = sweep_of(exp)
    objectives = objectives_of(exp)
    check_sweep(exp)  # every mistake in the sweep block before anything is written
    space = configurations(sweep)
    size = len(space) if space is not None else grid_size(sweep) if sweep.sampler == "grid" else None
    target = min(n_trials or sweep.trials, size or n_trials or sweep.trials)
    dev = pick_device(device)
    check_compile(exp.cfg.train.compile, dev)
    exp, data = experiment_data(exp)
    preflight(data, exp.cfg.train.batch_size)
    shared = open_storage(storage) if storage is not None else None  # a bad URL: before anything is written
    with open_locked_run_dir(exp, out, "stitch sweep", wait) as run_dir:
        url = storage or f"sqlite:///{(run_dir / 'sweep.sqlite').resolve()}"
        study, rdb = _open_study(exp, objectives, url, study_name, shared)
        progress = Progress(quiet=quiet, log=run_logger(run_dir))
        if target < (n_trials or sweep.trials):
            progress.message(
                f"the search space holds only {size} distinct configurations: "
                f"the sweep stops after {size} (asked for {n_trials or sweep.trials})"
            )
        if storage is None:  # the study's own file in a locked run directory: no other process runs a trial
            fail_dead_trials(study, rdb, every_running=True)
        task = make_task(exp.cfg.task, data, exp.cfg.train.loss)
        objective = TrialObjective(study, exp, objectives, data, task, dev, run_dir, progress)
        _optimize(study, rdb, objective, _Goal(target, timeout, space, sweep.seed), progress, run_dir, url)
        written = write_outputs(study, exp, run_dir / "sweep", objectives)
        try:
            written += write_runs_table(run_dir, run_dir / "sweep")
        except StitchError as exc:  # e.g. no finished run yet
            progress.message(f"runs table not written: {one_line_message(exc)}")
        progress.message(
            f"sweep: {distinct_finished(study)} distinct configurations decided in "
            f"{len(study.get_trials(deepcopy=False))} trials; outputs in {run_dir / 'sweep'}"
        )
    return SweepResult(study, run_dir, written)


def _open_study(
    exp: Experiment,
    objectives: list[Objective],
    url: str,
    study_name: str | None,
    shared: optuna.storages.BaseStorage | None,
) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """The study (created, or loaded to continue it) and its storage (``shared``: the ``--storage``
    already opened, else the run directory's ``url``). A resumed study continues the search: its
    sampler's seed depends on how many trials it holds (and on a shared storage on the worker's
    process id)."""
    sweep = sweep_of(exp)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pruner = PRUNERS.lookup(sweep.pruner if prunable(objectives) else "none")(
        sweep.epochs or exp.cfg.train.epochs
    )
    storage = shared if shared is not None else open_storage(url)
    name = study_name or exp.cfg.name
    seed = sampler_seed(sweep.seed, trials_in(storage, name), os.getpid() if shared is not None else None)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        load_if_exists=True,
        sampler=SAMPLERS.lookup(sweep.sampler)(sweep, seed, len(objectives) > 1),
        pruner=pruner,
        directions=[o.direction for o in objectives],
    )
    describe_study(
        study,
        [o.label for o in objectives],
        study_attributes(
            exp.cfg.name, exp.path, describe_sweep(exp), describe_objectives(objectives), exp.cfg.description
        ),
    )
    return study, storage


@dataclass
class _Goal:
    """What a sweep runs to: ``target`` distinct configurations, within ``timeout`` seconds; the
    finite space's configurations (None: unbounded) and the seed of the order in which those the
    sampler leaves out are proposed."""

    target: int
    timeout: float | None
    space: list[dict[str, Any]] | None
    seed: int


def _optimize(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    objective: TrialObjective,
    goal: _Goal,
    progress: Progress,
    run_dir: Path,
    url: str,
) -> None:
    """One trial at a time until ``goal.target`` distinct configurations are decided (in this
    worker or others), the timeout passes, trials fail :data:`MAX_FAILURES_IN_A_ROW` times in a
    row or the space is exhausted. Trials failed before (interrupted) and those of dead workers
    are retried first. When the sampler proposes only configurations decided before
    (:data:`REPEATS_BEFORE_PROPOSING` in a row), a configuration of a finite space not proposed
    yet is enqueued; none left, or :data:`MAX_REPEATS_IN_A_ROW` repeats in an unbounded space,
    ends the sweep with a message."""
    start = time.monotonic()
    failures = repeats = 0
    fail_stale_trials(study)  # workers silent for longer than the grace period: their trials failed
    fail_dead_trials(study, storage)
    if distinct_finished(study) < goal.target:
        retry_failed_trials(study)  # interrupted before (Ctrl-C, a crash): once more
    progress.message(
        f"sweep {study.study_name}: {distinct_finished(study)} of {goal.target} distinct configurations "
        f"decided, storage {url.split('@')[-1]}"
    )
    with progress:
        while (done := distinct_finished(study)) < goal.target:
            if goal.timeout is not None and time.monotonic() - start > goal.timeout:
                progress.message(f"--timeout {goal.timeout:g} s reached")
                break
            fail_stale_trials(study)
            fail_dead_trials(study, storage)
            if done + count(study, TrialState.RUNNING) >= goal.target and not count(
                study, TrialState.WAITING
            ):
                # the last trials run in other workers: they finish, or go stale and come back as retries
                time.sleep(WAIT_SECONDS)
                continue
            if repeats >= REPEATS_BEFORE_PROPOSING and not count(study, TrialState.WAITING):
                stop = _propose_unevaluated(study, goal, repeats, done)
                if stop:
                    progress.message(stop)
                    break
            before = count(study, TrialState.FAIL)
            study.optimize(objective, n_trials=1, catch=(RuntimeError,))
            failed = count(study, TrialState.FAIL) > before
            failures = failures + 1 if failed else 0
            repeats = 0 if failed or distinct_finished(study) > done else repeats + 1
            if failures >= MAX_FAILURES_IN_A_ROW:
                progress.message(
                    f"stopped: {failures} trials failed in a row (errors in {run_dir / 'log.txt'} "
                    "and trials.md); fix the cause and run the same command again"
                )
                break


def _propose_unevaluated(study: optuna.Study, goal: _Goal, repeats: int, done: int) -> str | None:
    """Enqueue a configuration of the finite space that no trial has proposed; the reason to stop
    when there is none (or when an unbounded space has seen too many repeats in a row)."""
    if goal.space is None:
        if repeats < MAX_REPEATS_IN_A_ROW:
            return None
        return (
            f"stopped: the sampler proposed only configurations evaluated before in its last {repeats} "
            f"trials ({done} distinct configurations decided); widen the search space or ask for fewer trials"
        )
    params = next_unevaluated(study, goal.space, goal.seed)
    if params is None:
        return (
            f"stopped: the search space holds only {done} distinct configurations and all were evaluated "
            f"(asked for {goal.target})"
        )
    study.enqueue_trial(params, skip_if_exists=False)
    return None

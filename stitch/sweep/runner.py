"""``run_sweep``: open (or continue) the study and run trials until the requested number have
finished, then write the sweep's outputs and its runs table."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from stitch.config import Experiment, sweep_of
from stitch.devices import pick_device
from stitch.errors import StitchError, one_line_message
from stitch.progress import Progress
from stitch.registry import PRUNERS, SAMPLERS
from stitch.report import write_runs_table
from stitch.runs import experiment_data, open_run_dir, preflight, run_logger
from stitch.sweep.check import check_sweep
from stitch.sweep.objectives import objectives_of, prunable
from stitch.sweep.outputs import write_outputs
from stitch.sweep.space import grid_size
from stitch.sweep.study import count, fail_stale_trials, finished, open_storage, retry_failed_trials
from stitch.sweep.trial import TrialObjective
from stitch.tasks import make_task

#: how often a worker whose remaining trials run elsewhere looks again, and when it gives up on failures
WAIT_SECONDS = 5
MAX_FAILURES_IN_A_ROW = 3


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
) -> SweepResult:
    """Run trials until ``n_trials`` (default ``sweep.trials``) have finished in the study."""
    sweep = sweep_of(exp)
    objectives = objectives_of(exp)
    check_sweep(exp)  # every mistake in the sweep block before anything is written
    target = n_trials or sweep.trials
    # on a shared storage each worker adds its process id to the seed, or every worker would
    # propose the same parameters in the same order
    seed = (sweep.seed + 7919 * os.getpid()) % 2**31 if storage is not None else sweep.seed
    sampler = SAMPLERS.lookup(sweep.sampler)(sweep, seed, len(objectives) > 1)
    if sweep.sampler == "grid":  # exhaustive: never more trials than grid points
        target = min(target, grid_size(sweep))
    dev = pick_device(device)
    exp, data = experiment_data(exp)
    preflight(data, exp.cfg.train.batch_size)
    run_dir = open_run_dir(exp, out)
    url = storage or f"sqlite:///{(run_dir / 'sweep.sqlite').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pruner = PRUNERS.lookup(sweep.pruner if prunable(objectives) else "none")(
        sweep.epochs or exp.cfg.train.epochs
    )
    study = optuna.create_study(
        storage=open_storage(url),
        study_name=study_name or exp.cfg.name,
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
        directions=[o.direction for o in objectives],
    )
    log = run_logger(run_dir)
    task = make_task(exp.cfg.task, data, exp.cfg.train.loss)
    progress = Progress(quiet=quiet, log=log)
    objective = TrialObjective(study, exp, objectives, data, task, dev, run_dir, progress)
    _optimize(study, objective, target, timeout, progress, run_dir, url)
    written = write_outputs(study, exp, run_dir / "sweep", objectives)
    try:
        written += write_runs_table(run_dir, run_dir / "sweep")
    except StitchError as exc:  # e.g. no finished run yet
        progress.message(f"runs table not written: {one_line_message(exc)}")
    progress.message(f"sweep: {finished(study)} trials finished; outputs in {run_dir / 'sweep'}")
    return SweepResult(study, run_dir, written)


def _optimize(
    study: optuna.Study,
    objective: TrialObjective,
    target: int,
    timeout: float | None,
    progress: Progress,
    run_dir: Path,
    url: str,
) -> None:
    """One trial at a time until ``target`` have finished (in this worker or others), the
    timeout passes or trials fail :data:`MAX_FAILURES_IN_A_ROW` times in a row. Trials failed
    before (interrupted) and those of dead workers are retried once first."""
    start = time.monotonic()
    failures = 0
    fail_stale_trials(study)  # workers silent for longer than the grace period: their trials failed
    if finished(study) < target:
        retry_failed_trials(study)  # interrupted before (Ctrl-C, a crash): once more
    progress.message(
        f"sweep {study.study_name}: {finished(study)} of {target} trials finished, "
        f"storage {url.split('@')[-1]}"
    )
    with progress:
        while finished(study) < target:
            if timeout is not None and time.monotonic() - start > timeout:
                progress.message(f"--timeout {timeout:g} s reached")
                break
            fail_stale_trials(study)
            if finished(study) + count(study, TrialState.RUNNING) >= target and not count(
                study, TrialState.WAITING
            ):
                # the last trials run in other workers: they finish, or go stale and come back as retries
                time.sleep(WAIT_SECONDS)
                continue
            before = count(study, TrialState.FAIL)
            study.optimize(objective, n_trials=1, catch=(RuntimeError,))
            failures = failures + 1 if count(study, TrialState.FAIL) > before else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                progress.message(
                    f"stopped: {failures} trials failed in a row (errors in {run_dir / 'log.txt'} "
                    "and trials.md); fix the cause and run the same command again"
                )
                break

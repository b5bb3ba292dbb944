"""Distributed ablations: ``stitch run EXP --storage URL`` on several machines, each worker with its
own ``--out``, sharing one Optuna storage through which they claim the experiment's runs.

The storage holds one study per experiment, ``<name>:runs``; each of its trials is one attempt at
one run (its only parameter ``run_id``), the sweep's trials reused (:mod:`stitch.sweep.study`:
the storage, heartbeats and the failing of dead trials). A worker enqueues the runs that no trial
has decided, pops a waiting trial, claims its run, trains it into its own run directory and stores
the finished row in the trial (system attribute ``stitch:row``; readable user attributes name its
variant, seed, insertions, status and best validation value) before completing it, so every worker
sees every row. The claim is a uniquely named study ``<name>:runs:claim:<run id>:<attempt>`` (attempt:
the run's finished trials so far): creating a study of a taken name fails in the database itself,
so of two workers that popped the same run (duplicate trials, or one trial popped twice on SQLite,
which has no row locks) exactly one trains it. A worker that dies stops its heartbeat; after the
grace period another worker fails its trial and claims the run again (from scratch: its
checkpoints are on the dead worker's disk; the same worker started again with the same ``--out``
resumes it from them when it is the one to claim it). Bookkeeping (the row, the plan's run ids,
a claim's trial) is in system attributes; studies written before kept it in user attributes, and
are read either way (:mod:`stitch.sweep.attributes`).

A worker keeps going until every run is decided (done, diverged or failed; interrupted or dead
attempts are retried), then writes all the rows into its ``runs.sqlite`` and the report, so each
worker's run directory holds the whole ablation. A failed run is tried again by the next
``stitch run … --storage`` (as a sequential re-run retries it).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from stitch.config import Experiment
from stitch.errors import StitchError
from stitch.progress import Progress
from stitch.runs import RunPlan
from stitch.session import RunSession
from stitch.store import RunRow, row_from_json, row_to_json, runs_with_checkpoints
from stitch.sweep.attributes import (
    bookkeeping,
    describe_study,
    set_study_bookkeeping,
    set_trial_bookkeeping,
    study_attributes,
    study_bookkeeping,
)
from stitch.sweep.study import fail_dead_trials, fail_stale_trials, heartbeat_settings, proposed_params

#: how often a worker whose remaining runs are trained elsewhere looks again
WAIT_SECONDS = 2.0
#: how long a worker that lost a claim waits for the winner to name its trial
CLAIM_NAME_WAIT_S = 5.0
#: statuses of a row that end a run (a failed one is tried again by the next command)
FINAL = ("done", "diverged", "failed")
#: the study's metric name: a trial's value means nothing (its run's row is the result)
PLACEHOLDER_METRIC = "placeholder (0)"


def study_name(experiment: str) -> str:
    """The study of an experiment's runs in a shared storage."""
    return f"{experiment}:runs"


@dataclass
class SharedRuns:
    """The runs study of one experiment in a shared storage, and this worker's plan."""

    storage: optuna.storages.RDBStorage
    study: optuna.Study
    plans: dict[str, RunPlan]

    @property
    def study_id(self) -> int:
        return self.storage.get_study_id_from_name(self.study.study_name)

    def trials_by_run(self) -> dict[str, list[FrozenTrial]]:
        """Every trial of the study, by the run it tries, in trial order."""
        out: dict[str, list[FrozenTrial]] = {}
        for t in self.study.get_trials(deepcopy=False):
            run_id = proposed_params(t).get("run_id")
            if run_id is not None:
                out.setdefault(run_id, []).append(t)
        return out

    def decided(self) -> dict[str, RunRow]:
        """The row of every run whose last finished attempt completed (none waiting or running)."""
        out = {}
        for run_id, trials in self.trials_by_run().items():
            live = [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
            ended = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
            row = bookkeeping(ended[-1], "row") if ended else None
            if not live and ended[-1:] and ended[-1].state == TrialState.COMPLETE and row is not None:
                out[run_id] = row_from_json(row)
        return out

    def enqueue_undecided(self, retry_failed: bool) -> int:
        """Enqueue a trial for every planned run with no live trial that is not decided (with
        ``retry_failed``, a run decided as failed too); returns how many."""
        by_run, decided = self.trials_by_run(), self.decided()
        n = 0
        for run_id in self.plans:
            trials = by_run.get(run_id, [])
            if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
                continue
            row = decided.get(run_id)
            if row is not None and (row.status != "failed" or not retry_failed):
                continue
            self.study.enqueue_trial({"run_id": run_id}, skip_if_exists=False)
            n += 1
        return n

    def claim(self, run_id: str, trial: Trial) -> bool:
        """Whether this worker's ``trial`` trains ``run_id`` (see the module's docstring); a losing
        trial of its own is pruned as a duplicate, one popped twice is left to the winner."""
        trials = self.trials_by_run().get(run_id, [])
        if any(t.state == TrialState.COMPLETE and ended_well(t) for t in trials):
            self.study.tell(trial, state=TrialState.PRUNED)  # a duplicate of a decided run
            return False
        attempt = sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
        name = f"{self.study.study_name}:claim:{run_id}:{attempt}"
        try:
            claim_id = self.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
        except optuna.exceptions.DuplicatedStudyError:
            if self.claimed_by(name) != trial.number:
                self.study.tell(trial, state=TrialState.PRUNED)
            return False
        set_study_bookkeeping(self.storage, claim_id, "trial", trial.number)
        return True

    def claimed_by(self, claim: str) -> int | None:
        """The trial number the winner of the claim ``claim`` wrote (None: not written in time)."""
        deadline = time.monotonic() + CLAIM_NAME_WAIT_S
        claim_id = self.storage.get_study_id_from_name(claim)
        while True:
            number = study_bookkeeping(self.storage, claim_id, "trial")
            if number is not None or time.monotonic() > deadline:
                return None if number is None else int(number)
            time.sleep(0.1)


def ended_well(trial: FrozenTrial) -> bool:
    """Whether a completed trial stored a row that ends its run for good (done or diverged)."""
    return (bookkeeping(trial, "row") or {}).get("status") in ("done", "diverged")


@contextmanager
def heartbeat(storage: optuna.storages.RDBStorage, trial_id: int) -> Iterator[None]:
    """Record ``trial_id``'s heartbeat now and every heartbeat interval while the block runs."""
    beat, _ = heartbeat_settings()
    stop = threading.Event()
    storage.record_heartbeat(trial_id)

    def loop() -> None:
        while not stop.wait(beat):
            storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=loop, name="stitch-run-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def open_shared_runs(
    storage: optuna.storages.RDBStorage,
    experiment: str,
    plans: list[RunPlan],
    exp: Experiment | None = None,
) -> SharedRuns:
    """The experiment's runs study in ``storage`` (created by the first worker); a study that holds
    another plan of the experiment (another file version, --epochs or --seeds) is one line. The
    study is described for optuna-dashboard (with ``exp``: its file, description and git commit)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(storage=storage, study_name=study_name(experiment), load_if_exists=True)
    study_id = storage.get_study_id_from_name(study.study_name)
    ids = sorted(p.run_id for p in plans)
    known = study_bookkeeping(storage, study_id, "run_ids")
    if known is None:
        set_study_bookkeeping(storage, study_id, "run_ids", ids)
    elif sorted(known) != ids:
        raise StitchError(
            f"the shared study {study.study_name} holds another plan of this experiment ({len(known)} runs, "
            f"here {len(ids)}); give every worker the same experiment file, --epochs and --seeds"
        )
    describe_study(study, [PLACEHOLDER_METRIC], _study_attributes(experiment, plans, exp))
    return SharedRuns(storage, study, {p.run_id: p for p in plans})


def _study_attributes(experiment: str, plans: list[RunPlan], exp: Experiment | None) -> dict[str, Any]:
    variants = list(dict.fromkeys(p.variant.name for p in plans))
    seeds = sorted({p.seed for p in plans})
    design = (
        f"distributed ablation: {len(plans)} runs, {len(variants)} variants ({', '.join(variants)}) "
        f"x seeds {', '.join(map(str, seeds))}; each trial is one attempt at one run"
    )
    return study_attributes(
        experiment,
        exp.path if exp is not None else None,
        design,
        "none: a trial's value is a placeholder 0; its run's status and best validation value are "
        "trial attributes",
        exp.cfg.description if exp is not None else "",
    )


def train_shared(
    shared: SharedRuns, session: RunSession, progress: Progress, stop_after: int | None = None
) -> dict[str, RunRow]:
    """Claim and train runs until every planned run is decided; returns the decided rows."""
    shared.enqueue_undecided(retry_failed=True)
    while True:
        fail_stale_trials(shared.study)  # workers silent for longer than the grace period
        fail_dead_trials(shared.study, shared.storage)  # and those that died before their first beat
        decided = shared.decided()
        if len(decided.keys() & shared.plans.keys()) == len(shared.plans):
            return decided
        waiting = shared.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting:
            train_next(shared, session, stop_after)
        elif not shared.enqueue_undecided(retry_failed=False):
            time.sleep(WAIT_SECONDS)  # the last runs are trained elsewhere


def train_next(shared: SharedRuns, session: RunSession, stop_after: int | None) -> None:
    """Pop a waiting trial; when its run is claimed here, train it and store its row in the trial."""
    with warnings.catch_warnings():  # our own heartbeat thread beats for it (see heartbeat())
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        trial = shared.study.ask()
    trial_id = shared.storage.get_trial_id_from_study_id_trial_number(shared.study_id, trial.number)
    run_id = proposed_params(shared.storage.get_trial(trial_id)).get("run_id")
    if run_id not in shared.plans:  # not an enqueued run (none was waiting any more)
        shared.study.tell(trial, state=TrialState.PRUNED)
        return
    # a parameter (the same choices in every trial: the plan, checked equal in every worker), so a
    # retry of the trial (stitch.sweep.study.retry_trial) keeps it
    trial.suggest_categorical("run_id", sorted(shared.plans))
    if not shared.claim(run_id, trial):
        return
    plan = shared.plans[run_id]
    with heartbeat(shared.storage, trial_id):
        trial.set_user_attr("variant", plan.variant.name)
        trial.set_user_attr("seed", plan.seed)
        # readable, and the mark of a trial that reached training (stitch.sweep.study.fail_dead_trials)
        trial.set_user_attr("insertions", ", ".join(plan.variant.insertions) or "baseline")
        fresh = run_id not in runs_with_checkpoints(session.run_dir)  # another machine's run: from scratch
        try:
            row = session.train(
                plan, force=fresh and session.store.get(run_id) is not None, stop_after=stop_after
            )
        except BaseException as exc:  # Ctrl-C, a user mistake: this attempt failed, another may try
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            shared.study.tell(trial, state=TrialState.FAIL)
            raise
    if row.status in FINAL:
        trial.set_user_attr("status", row.status)
        if row.best_value is not None:
            trial.set_user_attr(f"val {row.primary_metric}", row.best_value)
        set_trial_bookkeeping(trial, "row", row_to_json(row))
        shared.study.tell(trial, 0.0)  # the value means nothing: the row is the result
    else:  # stopped early (stop_after): tried again
        shared.study.tell(trial, state=TrialState.FAIL)

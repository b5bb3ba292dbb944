"""The Optuna study of a sweep, shared by every worker that names the same storage: opening it
(racing workers included), heartbeats, failing dead trials (stale heartbeat, or none at all) and
retrying them (interrupted ones until their configuration is decided, failed ones once), counting
trials by state, and the claim that lets one trial only train a configuration.

Storage is ``sqlite:///RUN_DIR/sweep.sqlite`` unless ``--storage URL`` (any SQLAlchemy URL, e.g.
PostgreSQL shared by several workers, each with its own run directory).
"""

from __future__ import annotations

import os
import time
import warnings
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from stitch.errors import StitchError, one_line_message
from stitch.sweep.attributes import bookkeeping, set_trial_bookkeeping

#: seconds between a running trial's heartbeats, and after how long without one it counts as dead
#: ($STITCH_SWEEP_HEARTBEAT / $STITCH_SWEEP_GRACE change them, e.g. for a quick test of a dead worker)
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
#: how long a trial waits for a lower-numbered trial of the same configuration to decide
CLAIM_WAIT_SECONDS = 60
#: the most trials of one configuration whose trials keep being interrupted (killed, Ctrl-C)
MAX_ATTEMPTS = 10


def heartbeat_settings() -> tuple[int, int]:
    """``(heartbeat interval, grace period)`` in seconds, from the environment or the defaults."""
    try:
        beat = int(os.environ.get("STITCH_SWEEP_HEARTBEAT", HEARTBEAT_SECONDS))
        grace = int(os.environ.get("STITCH_SWEEP_GRACE", GRACE_SECONDS))
    except ValueError:
        raise StitchError("$STITCH_SWEEP_HEARTBEAT and $STITCH_SWEEP_GRACE are whole seconds") from None
    if beat < 1 or grace <= beat:
        raise StitchError(
            f"$STITCH_SWEEP_GRACE ({grace}) must exceed $STITCH_SWEEP_HEARTBEAT ({beat}), "
            "which must be at least 1"
        )
    return beat, grace


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study storage at ``url``, with heartbeats; a dead trial is retried by :func:`retry_trial`."""
    beat, grace = heartbeat_settings()
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=beat,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=retry_trial,
                    engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
                )
        except Exception as exc:  # a bad URL, a missing driver, a server that refuses
            # Two workers creating Optuna's tables in one new database at once: one of them loses
            # the race (optuna/optuna#1092); the tables exist by the time it tries again.
            raced = ("already exists", "duplicate key", "UNIQUE constraint failed")  # SQLite says the last
            if attempt < 2 and any(text in str(exc) for text in raced):
                time.sleep(1.0 + attempt)
                continue
            raise StitchError(
                f"--storage {url}: cannot open the study storage ({one_line_message(exc)}); "
                "use an SQLAlchemy URL such as sqlite:///sweep.sqlite or postgresql+psycopg2://user@host/db"
            ) from None
    raise AssertionError("unreachable")


def attempts(trials: list[FrozenTrial], trial: FrozenTrial) -> int:
    """How many trials have tried ``trial``'s configuration in its chain of retries, ``trial`` included."""
    by_number = {t.number: t for t in trials}
    n, t = 1, trial
    while t.user_attrs.get("retry_of") in by_number and n < len(trials):
        t = by_number[t.user_attrs["retry_of"]]
        n += 1
    return n


def trials_in(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """How many trials the study ``study_name`` holds in ``storage`` (0 when it does not exist yet)."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def proposed_params(t: FrozenTrial) -> dict[str, Any]:
    """The parameters trial ``t`` evaluates: its own, or for an enqueued trial that has not asked
    for them yet (waiting, or killed before it did) those it was enqueued with."""
    return dict(t.params) or dict(t.system_attrs.get("fixed_params") or {})


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Run a failed or dead (stale heartbeat) trial once more, with the same parameters. A trial
    that was interrupted (killed, Ctrl-C, its worker silent) is retried again and again, up to
    :data:`MAX_ATTEMPTS` trials of its configuration (its run resumes from its checkpoint each
    time); one that failed with an error (its ``error`` user attribute) is retried once."""
    trials = study.get_trials(deepcopy=False)
    params = proposed_params(trial)
    if not params or any(t.user_attrs.get("retry_of") == trial.number for t in trials):
        return  # nothing was chosen yet, or it was retried already
    if trial.user_attrs.get("error") is not None and trial.user_attrs.get("retry_of") is not None:
        return  # a retry that failed with an error again is not retried a second time
    if attempts(trials, trial) >= MAX_ATTEMPTS:
        return
    study.enqueue_trial(params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)


def retry_failed_trials(study: optuna.Study) -> None:
    """Enqueue a retry of every failed trial not retried yet (interrupted before: Ctrl-C, a crash)."""
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL:
            retry_trial(study, t)


def fail_stale_trials(study: optuna.Study) -> None:
    """Mark the trials of workers silent for longer than the grace period failed (and retry them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def fail_dead_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, every_running: bool = False
) -> None:
    """Mark failed, and retry, the running trials that never sent a heartbeat and never reached
    the objective (no ``insertions`` attribute) although they started longer than the grace
    period ago: their worker died while the sampler proposed them, and Optuna's stale check,
    which needs a heartbeat, would leave them running for ever. With ``every_running`` (the
    caller knows no other process can be running a trial of this study: it holds the lock of the
    run directory the study's file is in), every running trial, at once."""
    _, grace = heartbeat_settings()
    now = datetime.now()
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start
        unstarted = "insertions" not in t.user_attrs and started is not None
        if not every_running and not (unstarted and started and (now - started).total_seconds() > grace):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished meanwhile
        retry_trial(study, t)


def count(study: optuna.Study, *states: TrialState) -> int:
    """How many of the study's trials are in one of ``states``."""
    return sum(t.state in states for t in study.get_trials(deepcopy=False))


def claim_configuration(study: optuna.Study, trial: Trial, run_id: str) -> tuple[str, Any]:
    """Decide, across workers, which trial trains configuration ``run_id`` (the study is the
    registry; each worker may have its own --out). ``trial`` has already set its ``run_id``
    attribute, so of two trials that check at the same time at least one sees the other.

    Returns ``("reuse", t)`` when trial ``t`` completed it, ``("pruned", t)`` / ``("being
    trained", t)`` when ``t`` pruned it or claimed it, else ``("train", None)`` after claiming it.
    Among running, undecided trials of one configuration the lowest number claims it; the others
    wait for its decision (at most :data:`CLAIM_WAIT_SECONDS`, after which a silent one counts as
    dead; one whose heartbeat stopped is failed at once). Trials pruned as duplicates, and failed
    ones, are not decisions about the configuration. The claim is bookkeeping (a system attribute,
    :mod:`stitch.sweep.attributes`; a study written before kept it in the user attributes)."""
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    while True:
        others = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number
            and t.user_attrs.get("run_id") == run_id
            and t.user_attrs.get("duplicate_of") is None
        ]
        done = [t for t in others if t.state == TrialState.COMPLETE and t.values is not None]
        if done:
            return "reuse", done[0]
        pruned = [t for t in others if t.state == TrialState.PRUNED]
        if pruned:
            return "pruned", pruned[0]
        running = [t for t in others if t.state == TrialState.RUNNING]
        claimed = [t for t in running if bookkeeping(t, "claim") == "train"]
        if claimed:
            return "being trained", claimed[0]
        if not any(t.number < trial.number for t in running) or time.monotonic() > deadline:
            set_trial_bookkeeping(trial, "claim", "train")
            return "train", None
        time.sleep(0.2)  # a lower-numbered trial of this configuration decides first
        fail_stale_trials(study)  # unless its worker is dead

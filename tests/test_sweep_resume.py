"""A resumed sweep continues the search: killed (SIGKILL) five times at different moments, or
interrupted with Ctrl-C, then run to its end, the study holds the requested number of distinct
configurations, each trained once, none left running; plus the pieces that make it so (distinct
counting, the resumed sampler's seed, retries of interrupted retries, finite spaces)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from kill_points import Child, ForkServer
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from yaml_snippets import tiny_shapes_unet

from stitch.cli import main
from stitch.config import SweepCfg
from stitch.store import ResultStore
from stitch.sweep.distinct import distinct_finished, next_unevaluated
from stitch.sweep.samplers import sampler_seed
from stitch.sweep.space import configurations, suggest
from stitch.sweep.study import MAX_ATTEMPTS, retry_failed_trials

# 10 configurations (3 points x (SE at 2 ratios + CoordAtt) + none), 6 asked for: a sampler that
# repeats itself must still end with 6 distinct ones; no pruner, so every run is deterministic
SWEEP = """\
    sweep:
      trials: 6
      seed: 0
      sampler: random
      pruner: none
      slots:
        - {name: A, at: [enc1, enc2, dec1], modules: [SE, CoordAtt], args: {SE: {rd_ratio: [0.125, 0.25]}}}
"""
ENV = {**os.environ, "STITCH_SWEEP_HEARTBEAT": "1", "STITCH_SWEEP_GRACE": "2", "OMP_NUM_THREADS": "1"}


def sweep_file(tmp_path: Path, sweep: str = SWEEP, epochs: int = 3) -> Path:
    path = tmp_path / "resume.yaml"
    path.write_text(tiny_shapes_unet("resume", tmp_path / "data", epochs=epochs) + textwrap.dedent(sweep))
    return path


def command(path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "stitch", "sweep", str(path), "--out", str(out), "--quiet"]


def _query(db: Path, sql: str) -> list[tuple]:
    """Rows of ``sql`` on a database another process is writing (nothing while it is locked or new)."""
    if not db.is_file():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


class Watch:
    """What a running sweep has written so far: trial rows, their states, retries, done runs, checkpoints."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def trials(self) -> list[tuple[int, str]]:
        return _query(self.run_dir / "sweep.sqlite", "SELECT number, state FROM trials ORDER BY number")

    def running_retries(self) -> set[int]:
        """Retries running their objective (a trial killed before it did is no retry in training)."""
        rows = _query(
            self.run_dir / "sweep.sqlite",
            "SELECT t.number, a.key FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
            "WHERE a.key IN ('retry_of', 'insertions') AND t.state = 'RUNNING'",
        )
        keys: dict[int, set[str]] = {}
        for number, key in rows:
            keys.setdefault(number, set()).add(key)
        return {n for n, k in keys.items() if k == {"retry_of", "insertions"}}

    def snapshot(self) -> dict[str, Any]:
        return {
            "trials": len(self.trials()),
            "done": self.done_runs(),
            "checkpoints": self.checkpoints(),
            "retries": self.running_retries(),  # left running by the process killed before
        }

    def done_runs(self) -> int:
        return len(_query(self.run_dir / "runs.sqlite", "SELECT run_id FROM runs WHERE status = 'done'"))

    def checkpoints(self) -> set[Path]:
        return (
            set((self.run_dir / "ckpt").glob("*/epoch-*.pt")) if (self.run_dir / "ckpt").is_dir() else set()
        )


def run_until(
    cmd: list[str], when: Callable[[], bool], sig: int, timeout: float = 120, server: ForkServer | None = None
) -> tuple[int, bool]:
    """Start ``cmd`` (forked by ``server`` when given), send ``sig`` as soon as ``when()`` holds;
    ``(exit code, whether it was sent)``."""
    proc: subprocess.Popen | Child
    if server is None:
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        proc = server.start(cmd[3:], Path(os.devnull))
    deadline = time.monotonic() + timeout
    sent = False
    while proc.poll() is None and time.monotonic() < deadline:
        if when():
            proc.send_signal(sig)
            sent = True
            break
        time.sleep(0.02)
    try:
        return proc.wait(timeout=timeout), sent
    finally:
        if proc.poll() is None:
            proc.kill()


def final_state(run_dir: Path) -> tuple[list[optuna.trial.FrozenTrial], dict[str, object]]:
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{run_dir / 'sweep.sqlite'}")
    with ResultStore(run_dir / "runs.sqlite") as store:
        rows = {r.run_id: r for r in store.rows()}
    return study.get_trials(), rows


def decided(trials: list[optuna.trial.FrozenTrial]) -> set[str]:
    return {
        t.user_attrs["run_id"]
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.user_attrs.get("duplicate_of") is None
    }


def comparable(row) -> tuple:
    """What a deterministic run must reproduce: its metrics per epoch (times left out)."""
    history = [
        {k: v for k, v in h.items() if k != "seconds" and not k.endswith("_per_s")} for h in row.history
    ]
    return row.status, row.epochs_done, row.best_epoch, row.best_value, json.dumps(history, sort_keys=True)


def test_a_sweep_killed_five_times_ends_with_the_requested_distinct_configurations(
    tmp_path: Path, monkeypatch
) -> None:
    """SIGKILL at five different moments (the first run's first checkpoint, a new trial row, the
    retry of a killed trial while it trains, a run just finished, a later checkpoint), re-running
    each time, then to the end: 6 distinct configurations decided, each trained once, nothing left
    running, and every run also trained by an uninterrupted sweep identical to it."""
    for key in ("STITCH_SWEEP_HEARTBEAT", "STITCH_SWEEP_GRACE"):
        monkeypatch.setenv(key, ENV[key])
    path = sweep_file(tmp_path)
    run_dir = tmp_path / "runs" / "resume"
    watch = Watch(run_dir)
    cmd = command(path, tmp_path / "runs")
    kills: list[str] = []
    moments: list[tuple[str, Callable[[dict[str, Any]], bool]]] = [
        ("the first checkpoint", lambda b: len(watch.checkpoints() - b["checkpoints"]) >= 1),
        ("a new trial row", lambda b: len(watch.trials()) > b["trials"]),
        ("a retry of a killed trial, training", lambda b: bool(watch.running_retries() - b["retries"])),
        ("a run just finished", lambda b: watch.done_runs() > b["done"]),
        ("the second new checkpoint", lambda b: len(watch.checkpoints() - b["checkpoints"]) >= 2),
    ]
    # every sweep is forked from one process that imported stitch and optuna once (the imports were
    # most of each start's time), with ENV; not this process, which may run torch with more
    # threads (its float32 sums would differ in the last bits)
    server = ForkServer(ENV, Path.cwd())
    try:
        for name, moment in moments:
            base = watch.snapshot()
            code, sent = run_until(cmd, lambda m=moment, b=base: m(b), signal.SIGKILL, server=server)
            if sent:
                kills.append(name)
            else:  # the sweep ended before that moment came
                assert code == 0
        print("kill points:", kills)
        assert len(kills) == 5, kills
        # to the end, and the reference, in processes like the killed ones
        assert server.start(cmd[3:], tmp_path / "end.out").wait() == 0, (tmp_path / "end.out").read_text()
        reference = tmp_path / "reference"
        ref_out = tmp_path / "reference.out"
        assert server.start(command(path, reference)[3:], ref_out).wait() == 0, ref_out.read_text()
    finally:
        server.close()

    trials, rows = final_state(run_dir)
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    configs = decided(trials)
    assert len(configs) == 6  # distinct configurations, complete (no pruner here)
    assert all(rows[r].status == "done" for r in configs)
    assert set(rows) == configs  # every run the sweep trained is one of them, each once
    # a killed trial and its killed retry: retried again, the configuration decided
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    assert any(t.user_attrs.get("retry_of") in retried and t.state == TrialState.COMPLETE for t in trials), (
        "no retry of a retry"
    )

    _, ref_rows = final_state(reference / "resume")
    common = set(ref_rows) & set(rows)
    assert common  # at least the first configuration
    for run_id in common:
        assert comparable(rows[run_id]) == comparable(ref_rows[run_id]), run_id


def test_ctrl_c_then_the_same_command_resumes_and_finishes(tmp_path: Path, monkeypatch) -> None:
    for key in ("STITCH_SWEEP_HEARTBEAT", "STITCH_SWEEP_GRACE"):
        monkeypatch.setenv(key, ENV[key])
    path = sweep_file(tmp_path, SWEEP.replace("trials: 6", "trials: 3"))
    run_dir = tmp_path / "runs" / "resume"
    watch = Watch(run_dir)
    cmd = command(path, tmp_path / "runs")
    code, sent = run_until(cmd, lambda: bool(watch.checkpoints()), signal.SIGINT)
    assert sent and code == 130
    interrupted = [n for n, s in watch.trials() if s == "FAIL"]
    assert len(interrupted) == 1
    assert main(cmd[3:]) == 0
    trials, rows = final_state(run_dir)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len(decided(trials)) == 3 and set(rows) == decided(trials)
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == interrupted[0])
    assert retry.state == TrialState.COMPLETE and rows[retry.user_attrs["run_id"]].epochs_done == 3


def test_a_space_smaller_than_the_trials_asked_for_ends_with_a_message(tmp_path: Path, capsys) -> None:
    sweep = """\
        sweep:
          trials: 5
          sampler: tpe
          slots:
            - {name: A, at: [enc1, enc2], modules: [SE], optional: false}
        """
    path = sweep_file(tmp_path, sweep, epochs=1)
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs")]) == 0
    assert "the search space holds only 2 distinct configurations" in capsys.readouterr().out
    trials, rows = final_state(tmp_path / "runs" / "resume")
    assert len(decided(trials)) == 2 and len(rows) == 2
    assert (
        main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--n-trials", "5"]) == 0
    )  # again: nothing to do
    assert len(final_state(tmp_path / "runs" / "resume")[0]) == len(trials)


def test_configurations_that_turn_out_to_be_the_same_end_the_sweep_with_a_message(
    tmp_path: Path, capsys
) -> None:
    """Two listed choices that make one configuration: the sampler can only repeat it, the
    unproposed one adds nothing, and the sweep stops saying how many the space holds."""
    sweep = """\
        sweep:
          trials: 5
          sampler: random
          slots:
            - {name: A, at: [enc1], modules: [SE], optional: false, args: {SE: {rd_ratio: [0.25, 0.25]}}}
        """
    path = sweep_file(tmp_path, sweep, epochs=1)
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "stopped: the search space holds only 1 distinct configurations and all were evaluated" in out, out
    trials, rows = final_state(tmp_path / "runs" / "resume")
    assert len(decided(trials)) == 1 and len(rows) == 1
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)]


def _study_with(*trials: optuna.trial.FrozenTrial) -> optuna.Study:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    for t in trials:
        study.add_trial(t)
    return study


def _trial(state: TrialState, at: str, **attrs: object) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        params={"A.at": at},
        distributions={"A.at": CategoricalDistribution(["enc1", "enc2", "none"])},
        user_attrs=attrs,
    )


def test_reused_and_duplicate_trials_do_not_count_as_distinct_configurations() -> None:
    study = _study_with(
        _trial(TrialState.COMPLETE, "enc1", run_id="r1"),
        _trial(TrialState.COMPLETE, "enc1", run_id="r1", reused="r1"),  # a repeat: reused
        _trial(TrialState.PRUNED, "enc1", run_id="r1", duplicate_of=0),
        _trial(TrialState.PRUNED, "enc2", invalid="cannot be stitched"),
        _trial(TrialState.PRUNED, "enc2", invalid="cannot be stitched"),  # the same invalid choice
        _trial(TrialState.FAIL, "none", run_id="r3"),
        _trial(TrialState.PRUNED, "none"),  # a duplicate retry, pruned before it chose anything
    )
    assert distinct_finished(study) == 2
    space = [{"A.at": "enc1"}, {"A.at": "enc2"}, {"A.at": "none"}, {"A.at": "dec1"}]
    assert next_unevaluated(study, space, 0) == {"A.at": "dec1"}  # a failed one is the retries' business
    study.enqueue_trial({"A.at": "dec1"})
    assert next_unevaluated(study, space, 0) is None


def test_a_resumed_study_seeds_its_sampler_from_its_trial_count() -> None:
    assert sampler_seed(7, 0) == 7  # a sweep run in one go is reproducible from sweep.seed
    assert len({sampler_seed(7, n) for n in range(50)}) == 50
    assert sampler_seed(7, 5) == sampler_seed(7, 5) and sampler_seed(7, 5, worker=3) != sampler_seed(7, 5)


def test_interrupted_retries_are_retried_again_errors_once() -> None:
    study = _study_with(
        _trial(TrialState.FAIL, "enc1"),  # killed
        _trial(TrialState.FAIL, "enc1", retry_of=0),  # its retry, killed too
        _trial(TrialState.FAIL, "enc2", error="RuntimeError: run failed"),
        _trial(TrialState.FAIL, "enc2", error="RuntimeError: run failed", retry_of=2),
    )
    retry_failed_trials(study)
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert [t.user_attrs["retry_of"] for t in waiting] == [1]  # trial 0 was retried, 3 failed with an error
    chain = [
        _trial(TrialState.FAIL, "enc1", **({"retry_of": k - 1} if k else {})) for k in range(MAX_ATTEMPTS)
    ]
    study = _study_with(*chain)
    retry_failed_trials(study)
    assert not [t for t in study.get_trials() if t.state == TrialState.WAITING]  # bounded


def test_the_listed_configurations_are_exactly_what_a_trial_asks_for() -> None:
    sweep = SweepCfg.model_validate(
        {
            "slots": [
                {
                    "name": "A",
                    "at": ["enc1", "enc2", "dec1"],
                    "modules": ["SE", "CoordAtt"],
                    "modes": ["after", "residual"],
                    "args": {"SE": {"rd_ratio": [0.125, 0.25]}},
                },
                {"name": "B", "at": ["enc3"], "modules": ["SE"], "optional": False},
            ],
            "train": {"batch_size": {"low": 2, "high": 4}, "epochs": [3]},
        }
    )
    listed = configurations(sweep)
    assert listed is not None and len(listed) == (3 * (2 * 2 + 2) + 1) * 3
    for params in listed:
        trial = optuna.trial.FixedTrial(params)
        suggest(trial, sweep)
        assert trial.params == params
    unbounded = SweepCfg.model_validate(
        {
            "slots": [{"name": "A", "at": ["enc1"], "modules": ["SE"]}],
            "train": {"optimizer.lr": {"low": 0.1, "high": 1.0}},
        }
    )
    assert configurations(unbounded) is None


def test_a_second_sweep_on_a_run_directory_in_use_is_refused_with_one_line(tmp_path: Path, capsys) -> None:
    path = sweep_file(tmp_path)
    run_dir = tmp_path / "runs" / "resume"
    run_dir.mkdir(parents=True)
    (run_dir / "experiment.yaml").write_text("theirs\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from stitch.run_lock import run_dir_lock\n"
            "with run_dir_lock(Path(sys.argv[1]), 'stitch sweep'):\n"
            "    print('held', flush=True); time.sleep(60)",
            str(run_dir),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pid {holder.pid}" in err and "--wait" in err, err
    assert (run_dir / "experiment.yaml").read_text() == "theirs\n"  # nothing rewritten
    assert not (run_dir / "sweep.sqlite").exists()

"""`stitch run EXP --storage URL`: two worker processes (each with its own --out, as on two
machines) share one store, train every run exactly once, and each ends with every row and the
rows of a single-process run."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from kill_points import ForkServer
from postgres_fixture import postgres_url  # noqa: F401
from test_jobs import rows_of, trained, two_by_two

from stitch.cli import main
from stitch.run_queue import study_name

NAME = "tiny_jobs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The experiment file and the rows of a plain single-process run of it (one thread)."""
    tmp = tmp_path_factory.mktemp("distributed")
    path = two_by_two(tmp)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", str(path), "--out", str(tmp / "single"), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return path, rows_of(tmp / "single" / NAME)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[ForkServer]]:
    """Two fork servers, one per worker so that both run at once: each worker is forked from a
    process that imported stitch once (kill_points.ForkServer), as ``python -m stitch`` would run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = [ForkServer(env, Path.cwd()) for _ in range(2)]
    try:
        yield started
    finally:
        for server in started:
            server.close()


def two_workers(path: Path, out: Path, url: str, servers: list[ForkServer]) -> list[str]:
    """Run two `stitch run --storage url` workers at once (--out out/w0, out/w1); their output."""
    args = ["run", str(path), "--storage", url, "--quiet", "--out"]
    logs = [out / f"w{k}.out" for k in range(2)]
    workers = [server.start([*args, str(out / f"w{k}")], logs[k]) for k, server in enumerate(servers)]
    codes = [w.wait(timeout=600) for w in workers]
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], outputs
    return outputs


def check_once_and_equal(out: Path, url: str, reference: dict) -> None:
    trained_by = {run_id: [] for run_id in reference}
    for k in range(2):
        run_dir = out / f"w{k}" / NAME
        rows = rows_of(run_dir)  # every worker holds every row
        assert rows.keys() == reference.keys()
        for run_id, row in reference.items():
            assert trained(rows[run_id]) == trained(row)
            if (run_dir / "ckpt" / run_id).is_dir():
                trained_by[run_id].append(k)
        assert (run_dir / "report").is_dir()
    assert all(len(ks) == 1 for ks in trained_by.values()), trained_by  # each run trained once
    trials = optuna.load_study(study_name=study_name(NAME), storage=url).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["run_id"] for t in complete) == sorted(reference)
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING", "FAIL")]


def test_two_workers_share_a_sqlite_store(tmp_path: Path, reference, servers) -> None:
    path, rows = reference
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    two_workers(path, tmp_path, url, servers)
    check_once_and_equal(tmp_path, url, rows)


def test_two_workers_share_a_postgresql_store(
    tmp_path: Path,
    reference,
    postgres_url: str,  # noqa: F811
    servers,
) -> None:
    path, rows = reference
    two_workers(path, tmp_path, postgres_url, servers)
    check_once_and_equal(tmp_path, postgres_url, rows)
    # a worker started afterwards trains nothing and writes the whole ablation into its directory
    assert (
        main(["run", str(path), "--out", str(tmp_path / "late"), "--storage", postgres_url, "--quiet"]) == 0
    )
    assert rows_of(tmp_path / "late" / NAME).keys() == rows.keys()
    assert not (tmp_path / "late" / NAME / "ckpt").exists()


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--storage", "nosuchdb://x"], "--storage nosuchdb://x: cannot open"),
        (["--storage", "sqlite:///{tmp}/s.db", "--jobs", "2"], "--storage with --jobs"),
        (["--storage", "sqlite:///{tmp}/s.db", "--force"], "--storage with --force"),
    ],
)
def test_bad_storage_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys, args: list[str], problem: str
) -> None:
    path = two_by_two(tmp_path)
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "s.db").exists()


def test_the_run_of_a_dead_worker_is_claimed_again_after_the_grace_period(
    tmp_path: Path, reference, monkeypatch
) -> None:
    """A worker that claimed a run and stopped beating (as if killed): after the grace period the
    next worker fails that attempt and trains the run itself, from scratch."""
    from stitch.config import load_experiment
    from stitch.run_queue import open_shared_runs
    from stitch.runs import experiment_data, plan_runs
    from stitch.sweep.study import open_storage

    monkeypatch.setenv("STITCH_SWEEP_HEARTBEAT", "1")
    monkeypatch.setenv("STITCH_SWEEP_GRACE", "2")
    path, rows = reference
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    exp, _ = experiment_data(load_experiment(path))
    shared = open_shared_runs(open_storage(url), NAME, plan_runs(exp))
    shared.enqueue_undecided(retry_failed=True)
    with warnings.catch_warnings():  # Optuna's note that heartbeats are for Study.optimize
        warnings.simplefilter("ignore", UserWarning)
        dead = shared.study.ask()  # the dead worker's attempt: claimed, one heartbeat, then silence
    dead_id = shared.storage.get_trial_id_from_study_id_trial_number(shared.study_id, dead.number)
    dead_run = dead.suggest_categorical("run_id", sorted(shared.plans))
    assert shared.claim(dead_run, dead)
    shared.storage.record_heartbeat(dead_id)
    dead.set_user_attr("insertions", [])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", str(path), "--out", str(tmp_path / "w"), "--storage", url, "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert shared.storage.get_trial(dead_id).state.name == "FAIL"
    got = rows_of(tmp_path / "w" / NAME)
    assert {k: trained(v) for k, v in got.items()} == {k: trained(v) for k, v in rows.items()}
    assert (tmp_path / "w" / NAME / "ckpt" / dead_run).is_dir()

"""The throwaway PostgreSQL server works as shared storage: concurrent connections, and one Optuna
study shared by two processes (what the distributed ``stitch sweep`` test relies on)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")


def test_concurrent_connections_insert(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    table = f"rows_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE {table} (id serial PRIMARY KEY, writer int, k int)")
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def write(writer: int) -> None:
            try:
                # Two connections, each with its own transaction open at the same time.
                with engine.connect() as conn:
                    barrier.wait(timeout=30)
                    for k in range(25):
                        conn.exec_driver_sql(f"INSERT INTO {table} (writer, k) VALUES (%s, %s)", (writer, k))
                    barrier.wait(timeout=30)
                    conn.commit()
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        with engine.connect() as conn:
            counts = dict(conn.exec_driver_sql(f"SELECT writer, count(*) FROM {table} GROUP BY writer").all())
            assert counts == {0: 25, 1: 25}
            assert conn.exec_driver_sql(f"SELECT count(DISTINCT id) FROM {table}").scalar() == 50
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        engine.dispose()


_WORKER = textwrap.dedent(
    """
    import sys
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, name = sys.argv[1], sys.argv[2]
    study = optuna.create_study(storage=url, study_name=name, load_if_exists=True)
    study.optimize(lambda t: (t.suggest_float("x", -10, 10) - 2) ** 2, n_trials=3)
    """
)


def test_optuna_study_shared_by_two_processes(postgres_url: str) -> None:
    optuna = pytest.importorskip("optuna")
    name = f"shared-{uuid.uuid4().hex[:8]}"
    # Optuna's tables are created once, before the workers: two processes creating them at the
    # same time on an empty database collide in PostgreSQL (CREATE TYPE ... duplicate key,
    # optuna/optuna#1092), as a sweep launcher must avoid too. Creating the study itself races
    # between the two workers below, which create_study(load_if_exists=True) handles.
    optuna.storages.RDBStorage(postgres_url).engine.dispose()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, postgres_url, name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        outs.append(out)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out

    study = optuna.load_study(study_name=name, storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(6))
    assert len({t._trial_id for t in trials}) == 6
    for t in trials:
        assert t.value == pytest.approx((t.params["x"] - 2) ** 2)
    optuna.delete_study(study_name=name, storage=postgres_url)

"""`stitch sweep`: Optuna over insertion points, modules and hyper-parameters, on tiny shapes data."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from yaml_snippets import tiny_shapes_unet

from stitch.cli import main
from stitch.config import load_experiment
from stitch.store import ResultStore


def sweep_file(tmp_path: Path, sweep: str, name: str = "tiny_sweep") -> Path:
    """A width-4 U-Net on 16 generated 32x32 images, 2 epochs per trial, and a ``sweep:`` block."""
    text = tiny_shapes_unet(name, tmp_path / "data") + textwrap.dedent(sweep)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


SLOTS = """\
    sweep:
      trials: 4
      seed: 0
      sampler: random
      slots:
        - {name: A, at: [enc1, enc2, dec1], modules: [SE, CoordAtt], args: {SE: {rd_ratio: [0.125, 0.25]}}}
      train: {optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}}
"""


def _trials(run_dir: Path):
    import optuna

    return optuna.load_study(
        study_name=run_dir.name, storage=f"sqlite:///{run_dir / 'sweep.sqlite'}"
    ).get_trials()


def test_sweep_writes_trials_plots_and_a_best_yaml_that_run_reproduces(tmp_path: Path, capsys) -> None:
    path = sweep_file(tmp_path, SLOTS)
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    out_dir = tmp_path / "runs" / "tiny_sweep" / "sweep"
    # each trial's TensorBoard folder names its chosen configuration (stitch.tensorboard_log.run_name)
    tb_runs = list((tmp_path / "runs" / "tiny_sweep" / "tb").iterdir())
    assert tb_runs and all(p.name.startswith(("trial-", "baseline_")) for p in tb_runs)
    for name in (
        "trials.csv",
        "trials.md",
        "best.yaml",
        "history.png",
        "parallel_coordinate.png",
        "runs.md",
        "runs.csv",
        "runs.tex",
    ):
        assert (out_dir / name).is_file(), name
    trials = _trials(tmp_path / "runs" / "tiny_sweep")
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    if len({t.value for t in trials}) > 1:
        assert (out_dir / "importances.png").is_file()
    else:  # a constant objective (a 2-epoch width-4 U-Net): its importances would mean nothing
        assert not (out_dir / "importances.png").exists()
        assert "importances: the objective is" in (out_dir / "plots_not_drawn.txt").read_text()
    assert all(t.intermediate_values for t in trials)  # reported per epoch, for the pruner
    for t in trials:  # define-by-run: an argument exists only with its module
        assert ("A.SE.rd_ratio" in t.params) == (t.params.get("A.module") == "SE")
    with ResultStore(tmp_path / "runs" / "tiny_sweep" / "runs.sqlite") as store:
        rows = {r.run_id: r for r in store.rows()}
    assert {t.user_attrs["run_id"] for t in trials} <= set(rows)  # every trial is a run in the database
    assert all(r.test_last_metrics is None for r in rows.values())  # the search never looks at test
    csv = (out_dir / "trials.csv").read_text().splitlines()
    assert len(csv) == 5 and csv[0].startswith("trial,state,miou,insertions")

    runs_md = (out_dir / "runs.md").read_text()  # the trained runs, from the results database
    assert runs_md.count("| trial ") + runs_md.count("| Baseline ") == len(rows) and "**" in runs_md
    (out_dir / "runs.md").unlink()
    # `stitch report` of a sweep: the same table
    assert main(["report", str(tmp_path / "runs" / "tiny_sweep")]) == 0
    assert (out_dir / "runs.md").read_text() == runs_md and (out_dir / "runs.tex").is_file()
    assert (
        main(["report", str(tmp_path / "runs" / "tiny_sweep"), str(tmp_path / "runs" / "tiny_sweep" / "x")])
        == 2
    )

    best = max(trials, key=lambda t: t.value)
    assert main(["validate", str(out_dir / "best.yaml")]) == 0
    assert main(["run", str(out_dir / "best.yaml"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    with ResultStore(tmp_path / "again" / "tiny_sweep_best" / "runs.sqlite") as store:
        again = {r.run_id: r for r in store.rows()}
    # deterministic CPU run
    assert again[best.user_attrs["run_id"]].best_value == pytest.approx(best.value, abs=1e-12)
    assert again[best.user_attrs["run_id"]].test_best_metrics  # a plain run is tested


def test_choices_that_cannot_be_stitched_are_pruned_without_training(tmp_path: Path) -> None:
    path = sweep_file(
        tmp_path,
        """\
        sweep:
          trials: 3
          sampler: grid
          slots:
            - {name: F, at: [enc1, skip4], modules: [CGAFusion], optional: false}
    """,
    )
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    trials = {t.params["F.at"]: t for t in _trials(tmp_path / "runs" / "tiny_sweep")}
    # the grid has 2 points
    assert set(trials) == {"enc1", "skip4"} and len(_trials(tmp_path / "runs" / "tiny_sweep")) == 2
    assert (
        trials["enc1"].state.name == "PRUNED"
        and "two-input fusion module" in trials["enc1"].user_attrs["invalid"]
    )
    assert "run_id" not in trials["enc1"].user_attrs  # never trained
    assert trials["skip4"].state.name == "COMPLETE"
    with ResultStore(tmp_path / "runs" / "tiny_sweep" / "runs.sqlite") as store:
        assert len(store.rows()) == 1
    assert "two-input fusion module" in (tmp_path / "runs" / "tiny_sweep" / "sweep" / "trials.md").read_text()


def test_an_interrupted_sweep_resumes_to_the_requested_trials_without_duplicates(
    tmp_path: Path, monkeypatch
) -> None:
    """Ctrl-C in the second trial's second epoch; the same command again retries that trial once
    with the same parameters, its run resumes from the epoch-1 checkpoint, no run trains twice."""
    from stitch.engine import Callback
    from stitch.session import RunSession
    from stitch.sweep import run_sweep

    path = sweep_file(tmp_path, SLOTS)
    real = RunSession.train
    epochs_trained: dict[str, list[int]] = {}
    phase = {"interrupt": True, "calls": 0}

    class Counting(Callback):  # runs before the sweep's pruning callback
        def __init__(self, run_id: str) -> None:
            self.run_id = run_id

        def on_epoch(self, state, record) -> None:
            epochs_trained.setdefault(self.run_id, []).append(record["epoch"])
            if phase["interrupt"] and phase["calls"] == 2 and record["epoch"] == 1:
                raise KeyboardInterrupt

    def counting(self, plan, *, callbacks=(), **kwargs):
        phase["calls"] += 1
        return real(self, plan, callbacks=[Counting(plan.run_id), *callbacks], **kwargs)

    monkeypatch.setattr(RunSession, "train", counting)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_experiment(path), out=tmp_path / "runs", quiet=True)
    phase["interrupt"] = False
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--quiet", "--n-trials", "5"]) == 0
    trials = _trials(tmp_path / "runs" / "tiny_sweep")
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 5 and states.count("FAIL") == 1
    failed = next(t for t in trials if t.state.name == "FAIL")
    retries = [t for t in trials if t.user_attrs.get("retry_of") == failed.number]
    assert len(retries) == 1 and retries[0].params == failed.params and retries[0].state.name == "COMPLETE"
    # epoch 1 before Ctrl-C, then only epoch 2
    assert epochs_trained[retries[0].user_attrs["run_id"]] == [1, 2]
    # no epoch of any run trained twice
    assert all(sorted(e) == sorted(set(e)) for e in epochs_trained.values())
    assert len({t.number for t in trials}) == len(trials)
    with ResultStore(tmp_path / "runs" / "tiny_sweep" / "runs.sqlite") as store:
        assert all(r.status == "done" for r in store.rows()) and len(store.rows()) == len(epochs_trained)


# optuna's note that the range holds one step
@pytest.mark.filterwarnings("ignore:The distribution is specified")
def test_the_grid_sampler_takes_single_valued_ranges(tmp_path: Path) -> None:
    path = sweep_file(
        tmp_path,
        """\
        sweep:
          sampler: grid
          slots:
            - {name: A, at: [enc1], modules: [SE], optional: false}
          train: {optimizer.lr: {low: 0.001, high: 0.0015, step: 0.001}}
    """,
    )
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    trials = _trials(tmp_path / "runs" / "tiny_sweep")
    assert [t.state.name for t in trials] == ["COMPLETE"] and trials[0].params["train.optimizer.lr"] == 0.001


def test_two_objectives_give_a_pareto_front(tmp_path: Path) -> None:
    path = sweep_file(
        tmp_path,
        """\
        sweep:
          trials: 3
          objectives: [miou, params]
          slots:
            - {name: A, at: [enc1, enc4], modules: [SE]}
    """,
    )
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    out_dir = tmp_path / "runs" / "tiny_sweep" / "sweep"
    assert (out_dir / "pareto_front.png").is_file() and (out_dir / "best.yaml").is_file()
    trials = _trials(tmp_path / "runs" / "tiny_sweep")
    assert all(len(t.values) == 2 for t in trials if t.state.name == "COMPLETE")


@pytest.mark.parametrize(
    "sweep, problem",
    [
        (
            "sweep: {objectives: [mIoU], slots: [{name: A, at: [enc1], modules: [SE]}]}",
            "unknown objective 'mIoU'",
        ),
        (
            "sweep: {train: {optimizer.learning_rate: [0.1]}}",
            "'optimizer.learning_rate' is not a train setting",
        ),
        ("sweep: {trials: 2}", "a sweep needs 'slots'"),
        ("sweep: {sampler: grid, train: {optimizer.lr: {low: 0.001, high: 0.01}}}", "range without a step"),
    ],
)
def test_sweep_mistakes_are_one_line_errors(tmp_path: Path, capsys, sweep: str, problem: str) -> None:
    path = sweep_file(tmp_path, sweep + "\n")
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err, err


def test_a_bad_storage_url_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    path = sweep_file(tmp_path, SLOTS)
    assert (
        main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--storage", "nosuchdb://x", "--quiet"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--storage nosuchdb://x" in err


def test_two_workers_share_one_postgresql_study(tmp_path: Path, postgres_url: str) -> None:
    """Two `stitch sweep` processes (separate run directories, as on two machines) on one
    PostgreSQL study reach the requested finished trials; each trial and each run once."""
    import subprocess
    import sys

    import optuna

    from stitch.sweep.distinct import distinct_finished

    # 5 configurations only: the workers will propose the same ones
    path = sweep_file(
        tmp_path,
        """\
        sweep:
          trials: 4
          sampler: random
          slots:
            - {name: A, at: [enc1, enc2], modules: [SE, CoordAtt]}
    """,
    )
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stitch",
                "sweep",
                str(path),
                "--out",
                str(tmp_path / f"worker{k}"),
                "--storage",
                postgres_url,
                "--study",
                "shared",
                "--n-trials",
                "6",
                "--quiet",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        )
        for k in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    # the space holds 5 configurations, fewer than the 6 asked for: both workers stop once all 5
    # are decided (repeated proposals are trials too, but not distinct configurations)
    assert distinct_finished(study) == 5 and len(finished) >= 5
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING", "FAIL")]
    assert len({t.number for t in trials}) == len(trials)
    run_ids: list[str] = []
    for k in range(2):
        with ResultStore(tmp_path / f"worker{k}" / "tiny_sweep" / "runs.sqlite") as store:
            run_ids += [r.run_id for r in store.rows()]
    assert len(run_ids) == len(set(run_ids))  # no run trained by both workers
    complete = {t.user_attrs["run_id"] for t in finished if t.state.name == "COMPLETE"}
    assert complete <= set(run_ids)


def test_a_results_database_from_before_the_pruned_status_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from stitch import store

    db = tmp_path / "runs.sqlite"
    con = sqlite3.connect(db)
    con.executescript(store.SCHEMA.replace(", 'pruned'", ""))
    con.execute(
        "INSERT INTO runs (run_id, experiment, variant, variant_slug, insertions, seed, status, config, "
        "primary_metric) VALUES ('a', 'e', 'v', 'v', '[]', 0, 'done', '{}', 'miou')"
    )
    con.commit()
    con.close()
    with ResultStore(db) as s:
        assert [r.status for r in s.rows()] == ["done"]
        s.update("a", status="pruned")
        assert s.get("a").status == "pruned"


def test_a_killed_worker_is_detected_by_its_heartbeat_and_its_trial_retried_once(tmp_path: Path) -> None:
    """SIGKILL a worker in the middle of a trial; a new worker finds the trial stale (no
    heartbeat), retries it once with the same parameters, and the run finishes."""
    import os
    import signal
    import sys
    import time

    from kill_points import ForkServer

    epochs = 10  # enough for the kill to land in the middle of the first trial's run
    path = sweep_file(tmp_path, SLOTS.replace("trials: 4", "trials: 2"))
    path.write_text(path.read_text().replace("  epochs: 2\n", f"  epochs: {epochs}\n", 1))
    env = {**os.environ, "STITCH_SWEEP_HEARTBEAT": "1", "STITCH_SWEEP_GRACE": "2", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "stitch",
        "sweep",
        str(path),
        "--out",
        str(tmp_path / "runs"),
        "--quiet",
        "--n-trials",
        "2",
    ]
    run_dir = tmp_path / "runs" / "tiny_sweep"

    def training() -> bool:  # a checkpoint exists: the first trial is in the middle of its run
        return (run_dir / "ckpt").is_dir() and any((run_dir / "ckpt").glob("*/epoch-*.pt"))

    # both workers are forked from one process that imported stitch once (kill_points.ForkServer),
    # each running what `python -m stitch sweep ...` runs
    server = ForkServer(env, Path.cwd())
    try:
        worker = server.start(cmd[3:], Path(os.devnull))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not training():
            time.sleep(0.02)
        assert training()
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        killed = [t for t in _trials(run_dir) if t.state.name == "RUNNING"]
        assert len(killed) == 1  # left running by the dead worker
        time.sleep(3)  # longer than the grace period
        again = server.start(cmd[3:], tmp_path / "again.out")
        assert again.wait(timeout=600) == 0, (tmp_path / "again.out").read_text()
    finally:
        server.close()
    trials = _trials(run_dir)
    dead = next(t for t in trials if t.number == killed[0].number)
    assert dead.state.name == "FAIL"
    retries = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert len(retries) == 1 and retries[0].params == dead.params and retries[0].state.name == "COMPLETE"
    with ResultStore(run_dir / "runs.sqlite") as store:
        row = store.get(retries[0].user_attrs["run_id"])
    assert row.status == "done" and row.epochs_done == epochs
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 2


def test_flops_all_ops_is_a_cost_objective(tmp_path: Path) -> None:
    from stitch.costs import variant_costs
    from stitch.plan import plan_variants
    from stitch.store import RunRow
    from stitch.sweep.objectives import objective_values, objectives_of

    path = tmp_path / "s.yaml"
    path.write_text(
        tiny_shapes_unet("fa", tmp_path / "data")
        + textwrap.dedent("""\
        insertions:
          - {name: CA, module: CoordAtt, at: "enc*"}
        sweep:
          sampler: nsga2
          objectives: [miou, flops_all]
          train: {optimizer.lr: [0.001, 0.01]}
        """)
    )
    exp = load_experiment(path)
    objectives = objectives_of(exp)
    assert [(o.metric, o.direction) for o in objectives] == [("miou", "maximize"), ("flops_all", "minimize")]
    variant = plan_variants(exp.cfg)[-1]
    row = RunRow(
        run_id="r",
        experiment="fa",
        variant=variant.name,
        variant_slug="ca",
        insertions=["CA"],
        seed=0,
        status="done",
        config={},
        primary_metric="miou",
        best_metrics={"miou": 0.5},
    )
    costs = variant_costs(exp, variant, 0)
    assert objective_values(row, objectives, exp, variant, 0) == (0.5, float(costs.flops_all))
    assert costs.flops_all > costs.flops

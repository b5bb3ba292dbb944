"""`stitch run --jobs N`: runs trained by worker processes give the rows of a sequential run; bad
--jobs/--devices are one line; bench/jobs_scaling.py runs (no timing asserted)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from yaml_snippets import tiny_shapes_unet

from stitch.cli import main
from stitch.store import ResultStore, RunRow

#: per-epoch record keys that measure time, not training
TIMING_KEYS = {"seconds", "train_images_per_s"}


def two_by_two(tmp_path: Path, name: str = "tiny_jobs", epochs: int = 2) -> Path:
    """Baseline and +SE, seeds 0 and 1: four tiny deterministic runs of ``epochs`` epochs."""
    text = tiny_shapes_unet(name, tmp_path / "data", epochs) + textwrap.dedent("""\
        insertions:
          - {name: SE, module: SE, at: "enc*"}
        seeds: [0, 1]
    """)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def trained(row: RunRow) -> tuple:
    """What training decided in a row (timings left out)."""
    history = [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in row.history]
    return (row.status, row.epochs_done, history, row.best_epoch, row.best_metrics, row.final_metrics)


def rows_of(run_dir: Path) -> dict[str, RunRow]:
    with ResultStore(run_dir / "runs.sqlite") as store:
        return {r.run_id: r for r in store.rows()}


def interrupt_two_jobs(path: Path, out: Path) -> str:
    """`stitch run --jobs 2` in a child process, sent SIGINT (as Ctrl-C at a terminal, which
    reaches the parent only) once two runs are training; its stderr. It must exit 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "stitch", "run", str(path), "--out", str(out), "--jobs", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "tiny_jobs" / "log.txt"
    deadline = time.monotonic() + 300
    while not (log.is_file() and log.read_text().count("epoch 1/3") >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    parent.send_signal(signal.SIGINT)
    _, err = parent.communicate(timeout=300)
    assert parent.returncode == 130, err
    return err


def test_two_jobs_interrupted_and_resumed_store_the_rows_of_a_sequential_run(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    path = two_by_two(tmp_path, epochs=3)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers (spawned) and this process: one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with monkeypatch.context() as patch:  # the sequential run's rows are compared, not its report
            patch.setattr("stitch.run.write_report", lambda run_dirs, out_dir, **kwargs: [])
            assert main(["run", str(path), "--out", str(tmp_path / "seq"), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    run_dir = tmp_path / "par" / "tiny_jobs"
    # Ctrl-C: every worker stops at its next step with a checkpoint; exit 130 and the resume line
    err = interrupt_two_jobs(path, tmp_path / "par")
    assert (
        err.strip().splitlines()[-1]
        == f"interrupted; resume with: stitch run {path} --out {tmp_path / 'par'} --jobs 2 --quiet"
    )
    stopped = [r for r in rows_of(run_dir).values() if r.status == "running"]
    # each saved where it stopped (interrupted.pt; an epoch's checkpoint when it stopped between epochs)
    assert stopped and all(list((run_dir / "ckpt" / r.run_id).glob("*.pt")) for r in stopped)
    assert "interrupted at epoch" in (run_dir / "log.txt").read_text()
    # the same command resumes them and trains the rest: the rows of the sequential run
    assert main(["run", str(path), "--out", str(tmp_path / "par"), "--quiet", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    seq, par = rows_of(tmp_path / "seq" / "tiny_jobs"), rows_of(run_dir)
    assert len(seq) == 4 and seq.keys() == par.keys()
    for run_id, row in seq.items():
        assert row.status == "done" and trained(par[run_id]) == trained(row)
    assert "2 workers on cpu" in out and out.count("2/2 done") == 2
    log = (run_dir / "log.txt").read_text()
    assert "[+SE s1] " in log and "[Baseline s0] " in log  # each worker's lines name their run
    assert len(list((run_dir / "tb").iterdir())) == 4
    for run_id in seq:
        assert (run_dir / "ckpt" / run_id / "best.pt").is_file()
    assert (run_dir / "report").is_dir() and len((run_dir / "results.csv").read_text().splitlines()) == 5
    # the same command again trains nothing
    assert main(["run", str(path), "--out", str(tmp_path / "par"), "--quiet", "--jobs", "2"]) == 0
    assert capsys.readouterr().out.count("already done, skipped") == 4


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--jobs", "0"], "--jobs 0: must be 1 .. 256"),
        (["--jobs", "two"], "--jobs 'two': a whole number"),
        (["--devices", "cuda:7"], "--device cuda:7"),
        (["--devices", "tpu"], "--device 'tpu'"),
        (["--devices", "cpu,,cpu"], "a comma-separated list"),
        (["--device", "cpu", "--devices", "cpu,cpu"], "give one of them"),
    ],
)
def test_bad_jobs_and_devices_are_one_line_and_write_nothing(
    tmp_path: Path, capsys, args: list[str], problem: str
) -> None:
    path = two_by_two(tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err, err
    assert not (tmp_path / "runs").exists()


def test_bench_jobs_scaling_runs(capsys) -> None:
    """bench/jobs_scaling.py end to end on tiny shapes, --jobs 1 in this process (its JSON, no
    timing asserted; `--jobs 2` itself is the test above)."""
    import importlib.util
    import json
    import sys

    script = Path(__file__).resolve().parent.parent / "bench" / "jobs_scaling.py"
    spec = importlib.util.spec_from_file_location("bench_jobs_scaling", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    tiny = ["--data", "shapes", "--shapes-images", "12", "--shapes-size", "32", "--epochs", "1"]
    out = module.main([*tiny, "--threads", "1", "--jobs", "1", "--seeds", "0", "--in-process"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(out))
    (only,) = out["results"]
    assert (
        only["jobs"] == 1 and only["runs"] >= 2 and only["same_results_as_first"] and only["speedup"] == 1.0
    )

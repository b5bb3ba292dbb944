"""Crash anywhere, lose nothing: ``stitch run`` killed with SIGKILL at random moments (during
checkpoint writes, report writes and at random delays) and run again until it finishes ends with
exactly the database, checkpoints and report of a run that was never interrupted.

The kill points are printed (to the terminal even without ``-s``) and recorded as the test
suite's ``crash_anywhere_kill_points`` property (JUnit XML, ``--junitxml``), with the seed that
chose them; ``STITCH_CRASH_SEED=<n>`` draws another set. At least two kills cut a checkpoint
write and two a report write (their temporary file was still there after the kill). What is
compared:

- the database: the same run ids, each once, all ``done``; every stored field equal except the
  measurements of the machine (``wall_time``, ``train_images_per_s``, ``peak_memory_mb``, the
  timestamps); every history entry equal except ``seconds`` and ``train_images_per_s``;
- the weights: every tensor of each run's ``best.pt`` and last epoch checkpoint;
- ``results.csv`` and the report's tables (csv, md, tex) with the measurement columns (latency,
  peak memory, training time, wall time, images/s) blanked; ``provenance.json`` likewise (and
  the run directory's path replaced); the plots (png, pdf) byte for byte, with
  ``SOURCE_DATE_EPOCH`` fixing the PDF's creation date in both runs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from kill_points import TMP_FILE, ForkServer, KillPoint, Trigger, run_once

from stitch.store import ResultStore, RunRow

ROOT = Path(__file__).resolve().parents[1]
MIN_KILLS = 10
#: kills that must cut a checkpoint write, and a write of the report (results.csv, costs.json, tables,
#: plots, provenance.json)
MIN_WRITE_KILLS = 2
MAX_ATTEMPTS = 40
#: kills while the runs train; the rest land on the report
MAX_TRAINING_KILLS = 7
#: the runs of :func:`experiment` (3 variants x 2 seeds)
RUNS = 6

#: stored values that measure the machine, not the training
ROW_MEASUREMENTS = {"wall_time", "train_images_per_s", "peak_memory_mb", "started_at", "updated_at"}
HISTORY_MEASUREMENTS = {"seconds", "train_images_per_s", "wall_time"}
#: table columns (header prefixes, csv and rendered) that measure the machine
COLUMN_MEASUREMENTS = (
    "latency",
    "peak_memory",
    "time_per_run",
    "wall_time",
    "train_images_per_s",
    "Latency",
    "Peak memory",
    "Time/run",
)


def experiment(tmp_path: Path) -> Path:
    """Baseline, +SE and +CBAM x seeds 0 and 1 on 16 generated 32x32 images, 3 epochs."""
    path = tmp_path / "crash.yaml"
    path.write_text(f"""\
name: crash
task: segmentation
baseline:
  model: unet
  args: {{base_width: 4}}
data:
  dataset: shapes
  root: {tmp_path / "data"}
  num_images: 16
  image_size: [32, 32]
  num_classes: 3
train:
  epochs: 3
  batch_size: 2
  deterministic: true
  keep_last: 2
  optimizer: {{lr: 0.02}}
insertions:
  - {{name: SE, module: SE, at: "enc*"}}
  - {{name: CBAM, module: CBAM, at: "enc*"}}
ablation: {{design: subsets, subsets: [[], [SE], [CBAM]]}}
seeds: [0, 1]
""")
    return path


def stored_rows(run_dir: Path) -> list[RunRow]:
    with ResultStore(run_dir / "runs.sqlite") as store:
        return store.rows()


def all_done(run_dir: Path, expected: int) -> bool:
    if not (run_dir / "runs.sqlite").exists():
        return False
    rows = stored_rows(run_dir)
    return len(rows) == expected and all(r.status == "done" for r in rows)


def comparable_row(row: RunRow) -> dict[str, Any]:
    d = {k: v for k, v in vars(row).items() if k not in ROW_MEASUREMENTS}
    d["history"] = [{k: v for k, v in h.items() if k not in HISTORY_MEASUREMENTS} for h in row.history]
    return d


def measured(header: str) -> bool:
    # a LaTeX header on two lines is a one-column tabular: ``\begin{tabular}[b]{@{}c@{}}Latency\\{}(ms)…``
    text = re.sub(r"^\\begin\{tabular\}\[b\]\{@\{\}c@\{\}\}", "", header.strip())
    return text.startswith(COLUMN_MEASUREMENTS)


def blank_csv(text: str) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if not measured(k)} for r in csv.DictReader(io.StringIO(text))]


def blank_rendered(text: str, sep: str) -> list[str]:
    """Lines of a Markdown (``|``) or LaTeX (``&``) table with the measurement columns emptied."""
    lines = text.splitlines()
    header = next(
        (i for i, line in enumerate(lines) if sep in line and any(measured(c) for c in line.split(sep))), None
    )
    if header is None:
        return lines
    width = lines[header].count(sep)
    drop = [i for i, c in enumerate(lines[header].split(sep)) if measured(c)]
    out = lines[:header]
    for line in lines[header:]:
        cells = line.split(sep)
        if line.count(sep) == width:
            cells = ["" if i in drop else c for i, c in enumerate(cells)]
        out.append(sep.join(cells))
    return out


def blank_provenance(text: str, run_dir: Path) -> Any:
    prov = json.loads(text.replace(str(run_dir), "<run_dir>"))
    for table in prov["tables"].values():
        for cells in table["cells"].values():
            for header in [h for h in cells if measured(h)]:
                del cells[header]
    return prov


def comparable_file(path: Path, run_dir: Path) -> Any:
    if path.suffix == ".csv":
        return blank_csv(path.read_text())
    if path.suffix == ".md":
        return blank_rendered(path.read_text(), "|")
    if path.suffix == ".tex":
        return blank_rendered(path.read_text(), "&")
    if path.suffix == ".json":
        return blank_provenance(path.read_text(), run_dir)
    return path.read_bytes()  # plots: byte for byte


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def next_trigger(rng: random.Random, training: bool, kills: list[KillPoint]) -> Trigger | None:
    """The next kill: checkpoint writes and random moments while training (at most
    ``MAX_TRAINING_KILLS``, then the training is let through to the report), report writes and
    random moments afterwards, each phase on writes until ``MIN_WRITE_KILLS`` cut one; None (run
    to the end) once ``MIN_KILLS`` landed. Each kill lets the run get a little further, so that
    few process starts (the slow part on a busy machine) cover the whole run."""
    training_kills = sum(k.training for k in kills)
    if training and training_kills < MAX_TRAINING_KILLS:
        writes = sum(k.cut and k.trigger.where == "ckpt" for k in kills)
        if writes < MIN_WRITE_KILLS or rng.random() < 0.5:
            return Trigger(where="ckpt", n=rng.randint(3, 6))  # >= 3: an epoch checkpoint completes first
        return Trigger(delay=rng.uniform(0.2, 2.0))
    writes = sum(k.cut and k.trigger.where == "report" for k in kills)
    if len(kills) >= MIN_KILLS and writes >= MIN_WRITE_KILLS:
        return None
    if writes < MIN_WRITE_KILLS or rng.random() < 0.5:
        return Trigger(where="report", n=rng.randint(1, 9))
    return Trigger(delay=rng.uniform(0.3, 3.0))


@pytest.mark.slow
def test_sigkill_anywhere_ends_as_an_uninterrupted_run(
    tmp_path: Path, capsys, record_testsuite_property
) -> None:
    seed = int(os.environ.get("STITCH_CRASH_SEED", "13"))
    rng = random.Random(seed)
    exp = experiment(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", SOURCE_DATE_EPOCH="1700000000")

    def command(out: str) -> list[str]:
        return [sys.executable, "-m", "stitch", "run", str(exp), "--out", str(tmp_path / out)]

    def say(line: str) -> None:
        with capsys.disabled():  # in the CI log without -s
            print(line, flush=True)

    # the uninterrupted run, in its own process beside the killed ones (they share only the
    # generated data, which stitch prepares atomically); compared once both have ended
    straight = tmp_path / "straight" / "crash"
    # the killed processes are forked from one that imported stitch once (the imports were most
    # of each attempt's time); the uninterrupted run is a plain `python -m stitch`
    server = ForkServer(env, ROOT)
    with open(tmp_path / "straight.out", "w") as out:
        reference = subprocess.Popen(
            command("straight"), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        killed = tmp_path / "killed" / "crash"
        say(f"\ncrash-anywhere kill points (STITCH_CRASH_SEED={seed}):")
        kills: list[KillPoint] = []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            training = not all_done(killed, RUNS)
            trigger = next_trigger(rng, training, kills)
            output = tmp_path / f"attempt-{attempt:02d}.out"
            code, kill = run_once(command("killed"), env, ROOT, killed, trigger, output, training, server)
            if kill is None:
                assert code == 0, f"attempt {attempt} failed by itself:\n{output.read_text()}"
                if trigger is None:
                    break
                continue
            assert code == -9, output.read_text()
            kills.append(kill)
            say(kill.line(len(kills)))
        else:
            pytest.fail(f"not finished after {MAX_ATTEMPTS} attempts")
        assert reference.wait(timeout=600) == 0, (tmp_path / "straight.out").read_text()
    finally:
        server.close()
        if reference.poll() is None:  # the test failed: leave no process behind
            reference.kill()
            reference.wait()
    expected = stored_rows(straight)
    assert len(expected) == RUNS and all(r.status == "done" for r in expected)
    lines = [kill.line(i) for i, kill in enumerate(kills, 1)]
    record_testsuite_property("crash_anywhere_seed", seed)  # in the JUnit XML (--junitxml)
    record_testsuite_property("crash_anywhere_kill_points", "\n".join(lines))
    left = sorted(str(p.relative_to(killed)) for p in killed.rglob("*") if TMP_FILE.match(p.name))
    say(f"{len(kills)} kills in {attempt} attempts; temporary files left at the end: {len(left)}")
    assert left == [], "the run after a kill removes the temporary files the killed writer left"

    # the database: every run once, done, with the uninterrupted run's metrics and histories
    rows = stored_rows(killed)
    assert sorted(r.run_id for r in rows) == sorted(r.run_id for r in expected)
    by_id = {r.run_id: r for r in rows}
    for want in expected:
        assert comparable_row(by_id[want.run_id]) == comparable_row(want), f"{want.variant} seed {want.seed}"

    # the weights, tensor for tensor
    for want in expected:
        a, b = straight / "ckpt" / want.run_id, killed / "ckpt" / want.run_id
        assert visible_files(a) == visible_files(b)
        for name in visible_files(a):
            ta, tb = tensors(a / name), tensors(b / name)
            assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name

    # the results table and the report
    assert comparable_file(killed / "results.csv", killed) == comparable_file(
        straight / "results.csv", straight
    )
    assert visible_files(killed / "report") == visible_files(straight / "report")
    for name in visible_files(straight / "report"):
        mine = comparable_file(killed / "report" / name, killed)
        assert mine == comparable_file(straight / "report" / name, straight), name

    assert len(kills) >= MIN_KILLS
    for where in ("ckpt", "report"):
        assert sum(k.cut and k.trigger.where == where for k in kills) >= MIN_WRITE_KILLS, where


@pytest.mark.usefixtures("no_report")  # the runs and their best.pt are checked, not the reports
def test_best_pt_of_an_epoch_killed_before_its_checkpoint_is_not_kept(tmp_path: Path) -> None:
    """The state a SIGKILL leaves between writing ``best.pt`` (epoch 2) and ``epoch-0002.pt``,
    when epoch 2 trained again is no better than epoch 1 (here: no learning at all, and a
    ``best.pt`` planted for epoch 2): the run must end as if never killed (epoch 1 chosen,
    its weights tested), not fail on every re-run."""
    from stitch.config import load_experiment
    from stitch.run import run_experiment

    text = experiment(tmp_path).read_text()
    for old, new in [
        ("seeds: [0, 1]", "seeds: [0]"),
        ("subsets: [[], [SE], [CBAM]]", "subsets: [[]]"),
        ("epochs: 3", "epochs: 2"),
        ("lr: 0.02", "lr: 1.0e-9"),  # epoch 2 cannot beat epoch 1
    ]:
        text = text.replace(old, new)
    (tmp_path / "crash.yaml").write_text(text)
    exp = load_experiment(tmp_path / "crash.yaml")
    (straight,) = run_experiment(exp, out=tmp_path / "straight", quiet=True)
    assert straight.best_epoch == 1 and straight.epochs_done == 2

    (row,) = run_experiment(exp, out=tmp_path / "killed", quiet=True, stop_after=1)
    best_file = tmp_path / "killed" / "crash" / "ckpt" / row.run_id / "best.pt"
    planted = torch.load(best_file, weights_only=True)
    planted["epoch"] = 2  # as the killed process's epoch 2 wrote it, before its epoch-0002.pt
    planted["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in planted["model"].items()}
    torch.save(planted, best_file)
    try:
        (row,) = run_experiment(exp, out=tmp_path / "killed", quiet=True)
    except Exception as exc:  # HeldOutError today
        pytest.fail(f"the resumed run failed: {exc}")
    assert row.status == "done" and row.best_epoch == 1
    assert row.test_best_metrics == straight.test_best_metrics
    mine = tensors(best_file)
    want = tensors(tmp_path / "straight" / "crash" / "ckpt" / row.run_id / "best.pt")
    assert mine.keys() == want.keys() and all(torch.equal(mine[k], want[k]) for k in want)


def test_best_pt_is_repaired_on_resume_or_removed_when_ahead(tmp_path: Path) -> None:
    """``repair_best`` after a resume at epoch 2: a ``best.pt`` of an older epoch while validation
    chose epoch 2 (killed between the epoch checkpoint and ``best.pt``) is rewritten from the
    restored model; one ahead of the restored epoch while validation chose an older one is removed."""
    from torch import nn

    from stitch.checkpoints import repair_best, save_atomic

    model, cpu = nn.Linear(2, 2), torch.device("cpu")
    best = tmp_path / "best.pt"
    save_atomic({"model": {k: v * 0 for k, v in model.state_dict().items()}, "epoch": 1, "metrics": {}}, best)
    repair_best(best, 2, 2, model, {"miou": 0.5}, cpu)
    saved = torch.load(best, weights_only=True)
    assert saved["epoch"] == 2 and saved["metrics"] == {"miou": 0.5}
    assert all(torch.equal(saved["model"][k], v) for k, v in model.state_dict().items())
    save_atomic({"model": model.state_dict(), "epoch": 3, "metrics": {}}, best)
    repair_best(best, 1, 2, model, {}, cpu)
    assert not best.exists()
    repair_best(best, 2, 2, model, {}, cpu)  # missing while validation chose the restored epoch
    assert torch.load(best, weights_only=True)["epoch"] == 2


def test_checkpoints_are_pruned_from_the_restored_epoch(tmp_path: Path) -> None:
    """A kill after ``epoch-0003.pt`` but before the pruning leaves ``epoch-0001.pt``: the resume
    prunes it (keep_last 2). Counted from the restored epoch, so after a fallback from an unfit
    ``epoch-0003.pt`` to ``epoch-0002.pt`` the good ``epoch-0001.pt`` is kept."""
    from stitch.checkpoints import prune_checkpoints

    for n in (1, 2, 3):
        (tmp_path / f"epoch-{n:04d}.pt").write_bytes(b"x")
    prune_checkpoints(tmp_path, 2, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"]
    prune_checkpoints(tmp_path, 3, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.pt", "epoch-0003.pt"]

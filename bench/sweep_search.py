"""Sweep: pruned TPE against an exhaustive grid on the same small search space.

The experiment (default: the sweep example ``experiments/sweep_unet_points.yaml``, nuclei data;
``--data shapes`` for generated shapes) gets a new ``sweep:`` block with one slot, ``ENC``, whose
candidate points are ``--points`` (default ``enc1 enc3``, and "none": the slot is optional) and
modules ``--modules`` (default ``CoordAtt SE CBAM``), every module at its default arguments:
``len(points) x len(modules) + 1`` distinct configurations (7 by default), each trained for
``--epochs`` epochs (default 4) with seed ``--seed``. It is searched twice, each time by
``stitch sweep FILE --out DIR --quiet`` in a subprocess, each in its own fresh ``--out`` (so no run
is reused from the other search):

- ``grid``: ``sampler: grid``, ``pruner: none``, ``trials`` = every distinct configuration: the
  exhaustive result, every configuration trained to its last epoch;
- ``tpe``: ``sampler: tpe``, ``pruner: median`` (stitch's median pruner), ``trials`` =
  ``--tpe-trials`` distinct configurations (default 4).

``--in-process`` runs both through ``stitch.cli.main`` in this process instead (no interpreter
start-up or imports in the times; the second search then finds the imports done).

Timed: each subprocess's wall time (``time.perf_counter`` around it: Python start-up, the data,
every trial, the sweep's outputs and plots, i.e. what a user waits for). From each sweep's
``sweep/trials.csv``: the trials by state, and the configuration (column ``insertions``) of the
best complete trial (the one ``best.yaml`` holds). ``rank``: the place of each search's pick in
the grid's exhaustive ranking by the objective (1 = the best; ties share the better place);
``regret``: the grid's best value minus the pick's. With ``deterministic: true`` (the example's)
a configuration trains to the same value in both searches. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_setup import ROOT, shapes_raw, write_experiment

SWEEP_EXAMPLE = ROOT / "experiments" / "sweep_unet_points.yaml"


def sweep_block(args: argparse.Namespace, sampler: str, pruner: str, trials: int) -> dict[str, Any]:
    """The ``sweep:`` block of one search."""
    return {
        "trials": trials,
        "epochs": args.epochs,
        "seed": args.seed,
        "sampler": sampler,
        "pruner": pruner,
        "slots": [{"name": "ENC", "at": list(args.points), "modules": list(args.modules)}],
    }


def run_sweep(raw: dict[str, Any], folder: Path, device: str, in_process: bool) -> float:
    """``stitch sweep`` of ``raw`` (written into ``folder``) with ``--out folder/runs``, in a
    subprocess or (``in_process``) through ``stitch.cli.main``; its wall seconds."""
    folder.mkdir()
    exp = write_experiment(raw, folder / f"{raw['name']}.yaml")
    argv = ["sweep", str(exp), "--out", str(folder / "runs"), "--quiet", "--device", device]
    start = time.perf_counter()
    if in_process:
        from stitch.cli import main as stitch_main

        with contextlib.redirect_stdout(sys.stderr):
            code = stitch_main(argv)
    else:
        cmd = [sys.executable, "-m", "stitch", *argv]
        code = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, env=os.environ.copy()).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"stitch sweep exited {code}: stitch {' '.join(argv)}")
    return seconds


def read_trials(folder: Path, name: str) -> list[dict[str, str]]:
    """The rows of a finished sweep's ``trials.csv``."""
    with (folder / "runs" / name / "sweep" / "trials.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def values(rows: list[dict[str, str]], metric: str) -> dict[str, float]:
    """The objective of every configuration a complete trial trained (``insertions`` -> value)."""
    out: dict[str, float] = {}
    for row in rows:
        if row["state"] == "complete" and row[metric] not in ("", "nan"):
            out.setdefault(row["insertions"] or "none", float(row[metric]))
    return out


def pick(found: dict[str, float]) -> tuple[str, float]:
    """The best configuration of a search (the first of equals, as Optuna's ``best_trial``)."""
    name = max(found, key=lambda k: found[k])
    return name, found[name]


def summary(
    rows: list[dict[str, str]], metric: str, grid: dict[str, float], seconds: float
) -> dict[str, Any]:
    """Wall time, trial states, the pick, its rank and regret in the grid's ranking."""
    found = values(rows, metric)
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    name, value = pick(found)
    best = max(grid.values())
    exhaustive = grid.get(name, math.nan)
    return {
        "wall_seconds": round(seconds, 2),
        "trials": len(rows),
        "states": states,
        "configurations_trained_to_the_end": len(found),
        "pick": name,
        "pick_value": value,
        "rank": 1 + sum(v > value for v in grid.values()),
        "regret": round(best - exhaustive, 6),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(SWEEP_EXAMPLE), help="default: the sweep example")
    parser.add_argument("--data", choices=["experiment", "shapes"], default="experiment")
    parser.add_argument("--shapes-images", type=int, default=32, help="images generated with --data shapes")
    parser.add_argument("--shapes-size", type=int, default=64, help="image side with --data shapes")
    parser.add_argument("--points", nargs="+", default=["enc1", "enc3"])
    parser.add_argument("--modules", nargs="+", default=["CoordAtt", "SE", "CBAM"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--tpe-trials", type=int, default=4, help="distinct configurations TPE decides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--in-process", action="store_true", help="run stitch sweep in this process (no interpreter start-up)"
    )
    args = parser.parse_args(argv)
    raw = yaml.safe_load(Path(args.experiment).read_text(encoding="utf-8"))
    if args.data == "shapes":
        raw = shapes_raw(raw, args.shapes_images, args.shapes_size)
    size = len(args.points) * len(args.modules) + 1
    metric = raw.get("metrics", {}).get("primary", "miou")
    searches = {"grid": ("grid", "none", size), "tpe": ("tpe", "median", min(args.tpe_trials, size))}
    seconds, rows = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (sampler, pruner, trials) in searches.items():
            print(f"{label}: {sampler} sampler, {pruner} pruner, {trials} configurations", file=sys.stderr)
            seconds[label] = run_sweep(
                {**raw, "sweep": sweep_block(args, sampler, pruner, trials)},
                Path(tmp) / label,
                args.device,
                args.in_process,
            )
            rows[label] = read_trials(Path(tmp) / label, raw["name"])
    grid = values(rows["grid"], metric)
    out: dict[str, Any] = {
        "benchmark": "sweep_search",
        "experiment": Path(args.experiment).name,
        "data": args.data if args.data == "shapes" else raw["data"]["dataset"],
        "objective": metric,
        "space": {"points": [*args.points, "none"], "modules": args.modules, "configurations": size},
        "epochs": args.epochs,
        "seed": args.seed,
        "in_process": args.in_process,
        "grid_ranking": dict(sorted(grid.items(), key=lambda kv: -kv[1])),
        **{label: summary(rows[label], metric, grid, seconds[label]) for label in searches},
    }
    out["tpe_over_grid_time"] = round(seconds["tpe"] / seconds["grid"], 3)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

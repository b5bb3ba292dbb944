"""``stitch run --jobs N`` scaling: the wall time of one small ablation trained with 1, 2, 4 … runs
at once.

The ablation is the experiment's variants (default: the main job, ``experiments/unet_coordatt.yaml``;
``--data shapes`` for generated shapes) x ``--seeds`` (default 0 1), ``--epochs`` epochs each. For
every ``--jobs`` value (default ``1 2 4``) it runs ``stitch run FILE --out DIR --quiet --jobs N
--device D`` in a fresh ``--out`` (so nothing is reused), as a subprocess (``--in-process``:
through ``stitch.cli.main`` in this process; the workers of ``N > 1`` are processes either way).
``--threads T`` sets ``OMP_NUM_THREADS=T`` for every worker (default: unset, so each of the N
workers gets ``cores // N`` torch threads, and ``--jobs 1`` gets torch's default).

Timed: the wall seconds of each command (``time.perf_counter`` around it: interpreter start-up,
data, every run, the summary and the report; i.e. what a user waits for). Also per value: runs per
minute, the speed-up over the first ``--jobs`` value, and whether every run's stored history (but
for its timings) and metrics equal those of the first value's runs (with ``train.deterministic:
true`` and one thread per process they are equal). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_setup import common_args, environment, shapes_raw, write_experiment

#: per-epoch history keys that are timings (left out when runs are compared)
TIMING_KEYS = ("seconds", "train_images_per_s")


def experiment_file(args: argparse.Namespace, folder: Path) -> Path:
    """The experiment to run: the given file, or a copy with generated shapes data (deterministic)."""
    if args.data != "shapes":
        return Path(args.experiment)
    raw = shapes_raw(
        yaml.safe_load(Path(args.experiment).read_text(encoding="utf-8")),
        args.shapes_images,
        args.shapes_size,
    )
    raw["data"]["root"] = str(folder / "data")
    raw["train"] = {**raw.get("train", {}), "deterministic": True}
    raw["name"] = "jobs_scaling"
    return write_experiment(raw, folder / "jobs_scaling.yaml")


def run_once(exp: Path, out: Path, jobs: int, args: argparse.Namespace) -> float:
    """``stitch run`` of ``exp`` with ``--jobs jobs`` into ``out``; its wall seconds."""
    argv = ["run", str(exp), "--out", str(out), "--quiet", "--device", args.device, "--jobs", str(jobs)]
    argv += ["--epochs", str(args.epochs), "--seeds", *map(str, args.seeds)]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    start = time.perf_counter()
    if args.in_process:
        from stitch.cli import main as stitch_main

        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                code = stitch_main(argv)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    else:
        cmd = [sys.executable, "-m", "stitch", *argv]
        code = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, env=env).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"stitch run exited {code}: stitch {' '.join(argv)}")
    return seconds


def trained(db: Path) -> dict[str, Any]:
    """Every run's status, history without timings and metrics, by run id (read with sqlite3)."""
    out = {}
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT run_id, status, history, best_metrics, final_metrics FROM runs"
        ).fetchall()
    for run_id, status, history, best, final in rows:
        epochs = [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in json.loads(history or "[]")]
        out[run_id] = (status, epochs, json.loads(best or "null"), json.loads(final or "null"))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_args(parser)
    parser.add_argument(
        "--jobs", type=int, nargs="+", default=[1, 2, 4], help="--jobs values (default 1 2 4)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the ablation")
    parser.add_argument(
        "--in-process", action="store_true", help="run stitch.cli.main here, not a subprocess"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="jobs-scaling-") as tmp:
        folder = Path(tmp)
        exp = experiment_file(args, folder)
        name = yaml.safe_load(exp.read_text(encoding="utf-8"))["name"]
        first: dict[str, Any] | None = None
        for jobs in args.jobs:
            print(f"--jobs {jobs} ...", file=sys.stderr, flush=True)
            out = folder / f"jobs{jobs}"
            seconds = run_once(exp, out, jobs, args)
            runs = trained(out / name / "runs.sqlite")
            first = first if first is not None else runs
            results.append(
                {
                    "jobs": jobs,
                    "runs": len(runs),
                    "wall_seconds": round(seconds, 2),
                    "runs_per_minute": round(60 * len(runs) / seconds, 2),
                    "speedup": round(results[0]["wall_seconds"] / seconds, 3) if results else 1.0,
                    "same_results_as_first": runs == first,
                }
            )
    report = {
        "benchmark": "jobs_scaling",
        "experiment": str(args.experiment),
        "data": args.data,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "omp_num_threads": args.threads,
        "in_process": args.in_process,
        "results": results,
        "environment": environment(torch.device(args.device)),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

"""Epoch costs: where a ``stitch run`` epoch's time goes besides the training steps.

Runs ``stitch run EXP --epochs N --seeds S --quiet --force`` in this process (``stitch.cli.main``,
into a temporary ``--out``) with timers wrapped around the functions a run calls once per epoch
(or per step) around its training steps, and reports each one's wall time per trained epoch, in
ms. Timed sections (``time.perf_counter``; on CUDA after ``torch.cuda.synchronize`` at both ends,
which adds syncs the run itself does not make), nested as they are called:

- ``train``: :func:`stitch.engine.train` as the session calls it (every epoch of a run, its
  setup and resume checks too); its ``self`` time is the training steps and the loop's own
  bookkeeping (``float(loss)``, the finite-loss check, the loader);
- ``validation``: the task's ``evaluate`` on the val split (every ``eval_every`` epochs);
- ``epoch checkpoint``: :func:`stitch.checkpoints.save_checkpoint` of the epoch file, with its
  ``checksum`` (CRC-32 of every tensor), ``torch.save`` and ``fsync`` (the file, then its
  folder) inside;
- ``best.pt``: the ``save_atomic`` of ``best.pt`` when validation improved;
- ``host copy``: the states copied to host memory for a background write (``train.async_checkpoint``;
  off on the CPU by default; sections timed in that thread are nested wrongly, so measure it off);
- ``prune``: :func:`stitch.checkpoints.prune_checkpoints`;
- ``results row``: the session's ``StoreCallback.on_epoch`` (the run's SQLite row updated);
- ``TensorBoard scalars``: ``TensorBoardCallback.on_epoch`` (epoch scalars, per-class values,
  ``flush``); ``TensorBoard loss parts``: its ``on_losses`` (collects a multi-part loss's parts);
  ``TensorBoard step losses``: its ``on_step`` (the step axis: loss, parts, learning rate);
  ``prediction grid``: its ``on_eval`` (the validation image grid drawn and added);
- ``progress``: ``ProgressCallback`` (the progress lines).

A function met again inside its own section (the recursive ``checksum``) is timed once. Sections
outside ``train`` (test evaluation, the report, the reference) are listed under ``outside
train`` and not divided by epochs. ``--cprofile FILE`` also writes a cProfile of the whole call
(``pstats`` format). Prints one JSON object: ms per epoch of every section path (``train >
epoch checkpoint > fsync``), the ``self`` remainder of each section, and the epochs counted.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_setup import MAIN_JOB, shapes_raw, write_experiment

import stitch.checkpoint_writer
import stitch.checkpoints
import stitch.engine
import stitch.session
import stitch.tasks.instance
import stitch.tasks.segmentation
import stitch.tensorboard_log
from stitch.cli import main as stitch_main

SEP = " > "


class Sections:
    """Nested wall-clock timers: the seconds and calls of every path of section labels."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.stack: list[str] = []
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def clock(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` timed as section ``label`` (untimed when already inside a ``label`` section)."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if label in self.stack:
                return fn(*args, **kwargs)
            self.stack.append(label)
            path = SEP.join(self.stack)
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[path] += self.clock() - start
                self.calls[path] += 1
                self.stack.pop()

        return timed


#: (object, attribute, section label): every function the run calls around its steps
HOOKS: list[tuple[Any, str, str]] = [
    (stitch.session, "train", "train"),
    (stitch.tasks.segmentation.SegmentationTask, "evaluate", "validation"),
    (stitch.tasks.instance.InstanceTask, "evaluate", "validation"),
    (stitch.checkpoint_writer, "cpu_copy", "host copy"),
    (stitch.checkpoint_writer, "save_checkpoint", "epoch checkpoint"),
    (stitch.checkpoints, "checksum", "checksum"),
    (stitch.checkpoint_writer, "save_atomic", "best.pt"),
    (torch, "save", "torch.save"),
    (os, "fsync", "fsync"),
    (stitch.checkpoint_writer, "prune_checkpoints", "prune"),
    (stitch.session.StoreCallback, "on_epoch", "results row"),
    (stitch.tensorboard_log.TensorBoardCallback, "on_epoch", "TensorBoard scalars"),
    (stitch.tensorboard_log.TensorBoardCallback, "on_losses", "TensorBoard loss parts"),
    (stitch.tensorboard_log.TensorBoardCallback, "on_step", "TensorBoard step losses"),
    (stitch.tensorboard_log.TensorBoardCallback, "on_eval", "prediction grid"),
    (stitch.session.ProgressCallback, "on_epoch", "progress"),
    (stitch.session.ProgressCallback, "on_step", "progress"),
]


@contextlib.contextmanager
def hooked(sections: Sections) -> Iterator[None]:
    """Every :data:`HOOKS` function replaced by its timed wrapper, restored on exit."""
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in HOOKS]
    try:
        for owner, name, label in HOOKS:
            setattr(owner, name, sections.wrap(label, getattr(owner, name)))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def per_epoch(sections: Sections, epochs: int) -> dict[str, Any]:
    """ms per epoch of every section path under ``train`` (and each one's ``self`` remainder);
    seconds of the sections outside ``train``."""
    inside = {p: s for p, s in sections.seconds.items() if p == "train" or p.startswith("train" + SEP)}
    rows: dict[str, dict[str, float]] = {}
    for path in sorted(inside):
        children = sum(
            s for p, s in inside.items() if p.startswith(path + SEP) and SEP not in p[len(path) + len(SEP) :]
        )
        rows[path] = {
            "ms_per_epoch": round(1000 * inside[path] / max(epochs, 1), 2),
            "self_ms_per_epoch": round(1000 * (inside[path] - children) / max(epochs, 1), 2),
            "calls": sections.calls[path],
        }
    outside = {p: round(s, 3) for p, s in sorted(sections.seconds.items()) if p not in inside}
    return {"sections": rows, "outside_train_seconds": outside}


def experiment_file(args: argparse.Namespace, tmp: Path) -> Path:
    """The experiment to run: the given file, or a copy with generated shapes data."""
    if args.data != "shapes":
        return Path(args.experiment)
    raw = yaml.safe_load(Path(args.experiment).read_text(encoding="utf-8"))
    raw = shapes_raw(raw, args.shapes_images, args.shapes_size)
    return write_experiment(raw, tmp / Path(args.experiment).name)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(MAIN_JOB), help="experiment file (default: the main job)")
    parser.add_argument("--data", choices=["experiment", "shapes"], default="experiment")
    parser.add_argument("--shapes-images", type=int, default=32)
    parser.add_argument("--shapes-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cprofile", default=None, help="also write a cProfile of the call to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = Sections(cuda=args.device.startswith("cuda"))
    with tempfile.TemporaryDirectory() as tmp:
        exp = experiment_file(args, Path(tmp))
        argv_run = ["run", str(exp), "--out", str(Path(tmp) / "runs"), "--quiet", "--force"]
        argv_run += ["--epochs", str(args.epochs), "--seeds", str(args.seed), "--device", args.device]
        profile = cProfile.Profile() if args.cprofile else None
        start = time.perf_counter()
        with hooked(sections), contextlib.redirect_stdout(sys.stderr):
            if profile is not None:
                profile.enable()
            code = stitch_main(argv_run)
            if profile is not None:
                profile.disable()
        wall = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"stitch run exited {code}")
        if profile is not None:
            profile.dump_stats(args.cprofile)
    epochs = sections.calls.get(SEP.join(["train", "results row"]), 0)
    out: dict[str, Any] = {
        "benchmark": "epoch_costs",
        "experiment": Path(args.experiment).name,
        "data": args.data,
        "device": args.device,
        "epochs_per_run": args.epochs,
        "epochs_counted": epochs,
        "wall_seconds": round(wall, 3),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **per_epoch(sections, epochs),
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

"""What ``stitch run`` shows while it trains: a rich progress bar, or plain lines (``--quiet``).

Every message also goes to the run directory's ``log.txt``.
"""

from __future__ import annotations

import logging
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import torch

from stitch.store import METRIC_FIELDS, reported_split


class Progress:
    """Progress of an experiment: one bar per run (variant, seed, epoch, step, loss, ETA, img/s)."""

    def __init__(self, quiet: bool = False, log: logging.Logger | None = None) -> None:
        self.quiet = quiet or not sys.stdout.isatty()
        self.log = log or logging.getLogger("stitch.run")
        self._bar: Any = None
        self._task: Any = None
        self._live = None
        self._epoch = 0
        self._epochs = 0
        self._steps = 0
        self._label = ""

    def __enter__(self) -> Progress:
        if not self.quiet:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[ips]:.1f} img/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def message(self, text: str) -> None:
        self.log.info(text)
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, flush=True)

    def start_experiment(self, name: str, n_runs: int, device: torch.device) -> None:
        self.message(f"{name}: {n_runs} runs on {device}")

    def skip(self, variant: str, seed: int, status: str) -> None:
        self.message(f"{variant} seed {seed}: already {status}, skipped (--force retrains)")

    def start_run(self, variant: str, seed: int, epochs: int, n_images: int, steps: int) -> None:
        self._label, self._epochs = f"{variant} s{seed}", epochs
        self._steps = max(1, steps)
        self.message(f"{variant} seed {seed}: training {epochs} epochs on {n_images} images")
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(
                self._label, total=epochs * self._steps, loss=float("nan"), ips=0.0
            )

    def step(self, epoch: int, step: int, loss: float, images: int) -> None:
        if self._bar is not None:
            self._bar.update(
                self._task,
                completed=(epoch - 1) * self._steps + step,
                loss=loss,
                description=f"{self._label} ep {epoch}/{self._epochs}",
            )

    def epoch_done(self, record: dict[str, Any], primary: str) -> None:
        metric = f", {primary} {record[primary]:.4f}" if primary in record else ""
        text = (
            f"  {self._label} epoch {record['epoch']}/{self._epochs}: "
            f"loss {record['train_loss']:.4f}{metric}, "
            f"{record['train_images_per_s']:.1f} img/s, {record['seconds']:.1f} s"
        )
        self.log.info(text)
        if self._bar is not None:
            self._bar.update(self._task, ips=record["train_images_per_s"])
        else:
            print(text, flush=True)

    def summary(self, rows: Sequence[Any], metrics: Sequence[str], selection: str = "best") -> None:
        """The short table printed at the end: per variant, mean ± std over seeds of each metric
        at the epoch ``selection`` names (``best`` validation epoch, or ``last``), on the held-out
        test split when every finished run has it (else the validation split; the header says
        which), parameters and time per run."""
        by_variant: dict[str, list[Any]] = {}
        for r in rows:
            by_variant.setdefault(r.variant, []).append(r)
        finished = [r for r in rows if r.status == "done" and r.best_metrics]
        split = reported_split(finished)
        field = METRIC_FIELDS[(split, selection)]
        header = (
            f"{'variant':<24} {'runs':>9}"
            + "".join(f" {m + f' ({split})':>17}" for m in metrics)
            + f" {'params':>12} {'time/run':>9}"
        )
        lines = [header]
        for variant, rs in by_variant.items():
            done = [r for r in rs if r.status == "done" and r.best_metrics]
            cells = []
            for m in metrics:
                values = [
                    getattr(r, field)[m]
                    for r in done
                    if isinstance((getattr(r, field) or {}).get(m), (int, float))
                ]
                if len(values) >= 2:
                    cells.append(f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")
                else:
                    cells.append(f"{values[0]:.4f}" if values else "—")
            params = f"{rs[0].params:,}" if rs[0].params else "—"
            secs = statistics.mean(r.wall_time for r in rs) if rs else 0.0
            status = f"{len(done)}/{len(rs)} done"
            lines.append(
                f"{variant:<24} {status:>9}"
                + "".join(f" {c:>17}" for c in cells)
                + f" {params:>12} {secs:>8.0f}s"
            )
        self.message("\n".join(lines))

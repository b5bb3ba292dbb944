"""What a run writes for TensorBoard (``runs/<exp>/tb/<run name>/``), and under which tags.

Each run's folder holds three TensorBoard runs, one per x axis, so that neither axis's resume purge
(``purge_step``) can drop the other's events:

- ``step/``: per optimiser step, ``train/loss_step``, its parts ``train/loss_<part>_step`` and
  ``train/lr`` (the scheduled base rate of that step), on the optimiser-step axis;
- ``epoch/``: per epoch, ``epoch/<key>`` for every key of the history record (``epoch/train_loss``,
  ``epoch/lr``, ``epoch/val_loss``, the metrics as ``epoch/val_<metric>``), per-class values as
  ``epoch_class_iou/<class>`` and ``epoch_class_dice/<class>``, and the validation overlays
  ``epoch/val_predictions``, on the epoch axis;
- the folder itself: the HParams session (the resolved config flattened to scalars, and the final
  metrics as ``final/<metric>``, ``best/<primary>``, ``test/<primary>``), written once when the
  run ends (done, pruned or diverged).

A writer opens on its first event with ``purge_step`` at that event's step: a resumed run drops the
events that a killed run had logged beyond its checkpoint, and TensorBoard shows each step once.
The loop hands over the losses when the host reads them (``train.sync_every``), never sooner: no
host synchronisation is added for logging.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from stitch.config import TrainCfg
from stitch.engine import Callback, LoopState, loss_key, lr_factor
from stitch.errors import disk_full_as_one_line
from stitch.visualize import prediction_grid

if TYPE_CHECKING:
    from stitch.data import DataBundle
    from stitch.runs import RunPlan
    from stitch.store import RunRow

#: the sub-folders of a run's TensorBoard folder: one TensorBoard run per x axis
STEP_DIR, EPOCH_DIR = "step", "epoch"
#: history keys that are not validation metrics (``epoch/<key>``; the rest are ``epoch/val_<key>``)
TRAIN_KEYS = ("lr", "train_images_per_s", "seconds")
#: the variant name a sweep trial's run gets (stitch.sweep.trial): its folder names its choices
TRIAL_NAME = re.compile(r"trial (\d+)")
#: an event file's name: its second of opening first (TensorBoard reads a folder's files in name order)
EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.")
#: longest readable part of a run's folder name (a file name has at most 255 bytes; stitch show's
#: file names cut the slug alike)
NAME_LIMIT = 80


def file_safe(text: str) -> str:
    """``text`` with every run of characters other than letters, digits and ``._+-`` made one
    ``-`` (no separators, no spaces, nothing a shell or a file system treats specially)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "run"


def insertion_label(insertion: dict[str, Any]) -> str:
    """One resolved insertion in a few characters: ``CBAM-after-enc1`` (module, mode, points)."""
    at = insertion.get("at")
    points = "+".join(at) if isinstance(at, list) else str(at)
    parts = [str(insertion.get("module")), str(insertion.get("mode") or ""), points]
    return "-".join(p for p in parts if p)


def run_name(plan: RunPlan) -> str:
    """The TensorBoard folder name of a run: ``<variant slug>_s<seed>_<run id[:8]>``; a sweep
    trial's names its chosen configuration instead of its number alone,
    ``trial-3_CBAM-after-enc1_s0_<id>``. File-system safe, the part before the seed at most
    :data:`NAME_LIMIT` characters (the run id keeps it unique)."""
    label = plan.variant.slug[:NAME_LIMIT]
    trial = TRIAL_NAME.fullmatch(plan.variant.name)
    if trial is not None:
        chosen = "_".join(insertion_label(i) for i in plan.config.get("insertions", [])) or "baseline"
        label = file_safe(f"trial-{trial[1]}_{chosen}")[:NAME_LIMIT].rstrip("-_.")
    return f"{label}_s{plan.seed}_{plan.run_id[:8]}"


def epoch_tag(key: str) -> str:
    """TensorBoard tag of a history key: ``epoch/train_loss``, ``epoch/lr``, ``epoch/val_loss``,
    and a metric ``miou`` as ``epoch/val_miou``."""
    if key in TRAIN_KEYS or key.startswith(("train_", "val_")):
        return f"epoch/{key}"
    return f"epoch/val_{key}"


def step_tag(part: str) -> str:
    """TensorBoard tag of one loss part per optimiser step: ``ce`` -> ``train/loss_ce_step``."""
    return f"train/{loss_key(part)[len('train_') :]}_step"


def wait_for_later_file_name(folder: Path) -> None:
    """Wait (at most a second) until a new event file of ``folder`` sorts after its existing ones.

    Event files are named by the second they were opened; TensorBoard reads them in name order,
    and a resume's purge only drops events of files read before it."""
    names = (EVENT_FILE.match(p.name) for p in folder.glob("events.out.tfevents.*"))
    stamps = [int(m[1]) for m in names if m is not None and int(m[1]) >= int(time.time())]
    if stamps:
        time.sleep(max(stamps) + 1 - time.time())


class LazyWriter:
    """A :class:`SummaryWriter` on ``folder`` opened by the first :meth:`at` with ``purge_step``
    at that step (events logged before at that step or later are dropped by TensorBoard)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.writer: SummaryWriter | None = None

    def at(self, step: int) -> SummaryWriter:
        """The writer (opened now if it is not, purging from ``step``)."""
        if self.writer is None:
            if self.folder.exists():
                wait_for_later_file_name(self.folder)
            self.writer = SummaryWriter(str(self.folder), purge_step=step)
        return self.writer

    def flush(self) -> None:
        """Write the buffered events (nothing when not opened)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Close the writer; the next :meth:`at` opens a new one (and purges from its step)."""
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()


class TensorBoardCallback(Callback):
    """Per optimiser step the loss, its parts and the rate; per epoch the history record, the
    per-class IoU/Dice and the prediction overlays (the module docstring lists the tags)."""

    def __init__(
        self, tb_dir: Path, data: DataBundle, device: torch.device, steps_per_epoch: int, cfg: TrainCfg
    ) -> None:
        self.tb_dir, self.data, self.device = tb_dir, data, device
        self.steps, self.cfg = steps_per_epoch, cfg  # micro-steps per epoch; the run's train settings
        self.step_log, self.epoch_log = LazyWriter(tb_dir / STEP_DIR), LazyWriter(tb_dir / EPOCH_DIR)
        self.losses: list[float] = []  # the micro-steps of the optimiser step under way
        self.parts: dict[str, list[float]] = {}
        self.group: tuple[int, int] | None = None  # (epoch, optimiser step in it) of those

    def restart(self, steps_per_epoch: int, cfg: TrainCfg) -> None:
        """After an out-of-memory retry (a new micro-batch, the loop back at its last checkpoint):
        the writers reopen at their next event and purge what the failed attempt logged after it."""
        self.steps, self.cfg = steps_per_epoch, cfg
        self.losses, self.parts, self.group = [], {}, None
        self.close()

    @property
    def optimizer_steps(self) -> int:
        """Optimiser steps per epoch (the step axis's unit, as the schedule counts them)."""
        return math.ceil(self.steps / self.cfg.grad_accum)

    def group_of(self, epoch: int, step: int) -> tuple[int, int]:
        """The optimiser step (epoch, step in it, from 1) that micro-step ``step`` belongs to."""
        return epoch, math.ceil(step / self.cfg.grad_accum)

    def log_group(self) -> None:
        """Write the optimiser step gathered so far: the mean loss of its micro-steps, its
        parts and the scheduled base rate it trained with."""
        if self.group is None or not self.losses:
            return
        epoch, step = self.group
        global_step = (epoch - 1) * self.optimizer_steps + step
        writer = self.step_log.at(global_step)
        writer.add_scalar("train/loss_step", sum(self.losses) / len(self.losses), global_step)
        for part, values in self.parts.items():
            writer.add_scalar(step_tag(part), sum(values) / len(values), global_step)
        rate = self.cfg.optimizer.lr * lr_factor(global_step - 1, self.optimizer_steps, self.cfg)
        writer.add_scalar("train/lr", rate, global_step)
        self.losses, self.parts, self.group = [], {}, None

    def gather(self, epoch: int, step: int) -> None:
        """Start gathering the optimiser step of micro-step ``step`` (the one before logged)."""
        group = self.group_of(epoch, step)
        if group != self.group:
            self.log_group()
            self.group = group

    def on_losses(self, epoch: int, step: int, parts: dict[str, float]) -> None:
        self.gather(epoch, step)
        for part, value in parts.items():
            self.parts.setdefault(part, []).append(value)

    def on_step(self, epoch: int, step: int, loss: float, images: int) -> None:
        self.gather(epoch, step)
        self.losses.append(loss)
        if step % self.cfg.grad_accum == 0 or step >= self.steps:  # the optimiser stepped
            self.log_group()

    def on_eval(self, epoch: int, model: nn.Module) -> None:
        grid = prediction_grid(model, self.data, n=4, device=self.device)
        self.epoch_log.at(epoch).add_image("epoch/val_predictions", grid, epoch)

    def on_epoch(self, state: LoopState, record: dict[str, Any]) -> None:
        self.log_group()  # the epoch's last optimiser step, whatever the loader's length
        epoch = record["epoch"]
        writer = self.epoch_log.at(epoch)
        for key, value in record.items():
            if key != "epoch":
                writer.add_scalar(epoch_tag(key), value, epoch)
        metrics = state.last_metrics or {}
        for name, prefix in (("iou_per_class", "epoch_class_iou"), ("dice_per_class", "epoch_class_dice")):
            for c, value in enumerate(metrics.get(name, []) if record.get("val_loss") is not None else []):
                writer.add_scalar(f"{prefix}/{self.data.class_names[c]}", value, epoch)
        self.step_log.flush()
        self.epoch_log.flush()

    def close(self) -> None:
        """Close both writers (a full disk is the one-line :class:`~stitch.errors.DiskFullError`)."""
        for log in (self.step_log, self.epoch_log):
            with disk_full_as_one_line(self.tb_dir):
                log.close()


def flat_scalars(value: Any, prefix: str = "") -> Iterator[tuple[str, bool | int | float | str]]:
    """``(dotted key, value)`` for every scalar in a nested config: dicts and lists of dicts by
    key and index (``insertions.0.module``), a list of scalars as its JSON text, None left out."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flat_scalars(item, f"{prefix}{key}.")
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        for i, item in enumerate(value):
            yield from flat_scalars(item, f"{prefix}{i}.")
    elif isinstance(value, list):
        yield prefix[:-1], json.dumps(value)
    elif isinstance(value, (bool, int, float, str)):
        yield prefix[:-1], value


def hparam_values(row: RunRow) -> dict[str, bool | int | float | str]:
    """The HParams of a run: its resolved config flattened to scalars, its variant and status."""
    return {**dict(flat_scalars(row.config)), "variant": row.variant, "status": row.status}


def final_metrics(row: RunRow) -> dict[str, float]:
    """The HParams metrics of a run: ``final/<metric>`` (last evaluation), ``best/<primary>`` and
    ``test/<primary>`` (at the epoch val chose) where there are."""

    def numbers(metrics: dict[str, Any] | None, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}/{k}": float(v)
            for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }

    out = numbers(row.final_metrics, "final")
    if row.best_value is not None:
        out[f"best/{row.primary_metric}"] = float(row.best_value)
    test = numbers(row.test_best_metrics, "test")
    if f"test/{row.primary_metric}" in test:
        out[f"test/{row.primary_metric}"] = test[f"test/{row.primary_metric}"]
    return out


def write_hparams(tb_dir: Path, row: RunRow) -> None:
    """Write the run's HParams session into ``tb_dir`` (replacing one written before, so a run
    resumed after it ended has it once); a full disk is the one-line DiskFullError."""
    with disk_full_as_one_line(tb_dir):
        for old in tb_dir.glob("events.out.tfevents.*"):
            old.unlink()
        metrics = final_metrics(row)
        experiment, start, end = hparams(hparam_values(row), metrics)
        writer = SummaryWriter(str(tb_dir))
        try:
            file_writer = writer.file_writer
            assert file_writer is not None  # opened by the constructor
            for summary in (experiment, start, end):
                file_writer.add_summary(summary)
            for tag, value in metrics.items():
                writer.add_scalar(tag, value)
        finally:
            writer.close()

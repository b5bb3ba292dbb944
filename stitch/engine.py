"""The training loop: device, precision, seeding, schedule, checkpoints, resume.

It knows nothing of which task it trains: a task gives ``loss(model, batch)`` and
``evaluate(model, batches, device)``. Resume is exact on CPU with ``deterministic: true``: every
epoch starts by re-seeding Python, NumPy, torch and the sampler from ``(seed, epoch)``, and a
checkpoint (written atomically every epoch) holds the model, optimiser, schedule and scaler
state, so epoch ``e`` after a resume sees exactly the batches, augmentations and dropout masks it
would have seen without the interruption. Ctrl-C stops at an optimiser-step boundary and leaves a
mid-epoch checkpoint that the next call continues from exactly (:func:`train`); checkpoints that do
not fit the model are skipped for older ones (:mod:`stitch.checkpoints`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from stitch.channels_last import batch_channels_last, model_channels_last
from stitch.checkpoint_writer import CheckpointWriter, background_writes, epoch_checkpoint
from stitch.checkpoints import (
    INTERRUPTED,
    TrainingObjects,
    prune_checkpoints,
    repair_best,
    restore_interrupted,
    restore_latest,
    save_checkpoint,
)
from stitch.config import TrainCfg
from stitch.device_sums import EpochSums, StepValues, sync_interval
from stitch.devices import to_device
from stitch.distributed import any_rank, is_distributed, is_main, rank, sum_over_ranks, world_size
from stitch.interrupt import TrainingInterrupted, stop_on_sigint
from stitch.loaders import make_loaders
from stitch.memory import larger, peak_memory_mb, reset_peak_memory
from stitch.precision import ScheduledStep, training_precision
from stitch.registry import OPTIMIZERS
from stitch.seeding import epoch_seed, rng_state, seed_everything, set_deterministic, set_rng_state
from stitch.tasks.base import Task, loss_part_key


class Diverged(RuntimeError):
    """The training loss stopped being finite."""


class StopTraining(Exception):
    """Raised by a callback to end a run early on purpose (a sweep pruning a weak trial); the
    run is stored with ``status`` and ``reason``, not as a failure."""

    def __init__(self, reason: str, status: str = "pruned") -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


def batch_images(batch: dict[str, Any]) -> int:
    """How many images a batch holds: a stacked ``image`` tensor (segmentation) or an
    ``images`` list (detection models take lists of differently sized images)."""
    if "images" in batch:
        return len(batch["images"])
    return int(batch["image"].shape[0])


def loss_key(part: str) -> str:
    """History key of one loss component: ``ce`` -> ``train_loss_ce``, ``loss_mask`` ->
    ``train_loss_mask`` (:func:`stitch.tasks.base.loss_part_key`; validation's are ``val_loss_*``)."""
    return loss_part_key("train", part)


# ----------------------------------------------------------------------------- optimiser, schedule
def make_optimizer(params: Any, cfg: TrainCfg) -> torch.optim.Optimizer:
    """The optimiser ``cfg.optimizer.name`` names (:data:`stitch.registry.OPTIMIZERS`)."""
    optimizer: torch.optim.Optimizer = OPTIMIZERS.lookup(cfg.optimizer.name)(params, cfg.optimizer)
    return optimizer


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainCfg) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (warm-up, then the schedule).

    One function instead of chaining torch's schedulers: a ``LambdaLR`` over it is exactly
    resumable from its state dict, and warm-up composes with every schedule the same way.
    """
    s = cfg.scheduler
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(s.warmup_epochs * steps_per_epoch, total - 1)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = s.min_lr / cfg.optimizer.lr
    if s.name == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if s.name == "poly":
        return floor + (1 - floor) * (1 - progress) ** s.power
    if s.name == "step":
        epochs_done = step // max(1, steps_per_epoch)
        if s.milestones:
            return s.gamma ** sum(epochs_done >= m for m in s.milestones)
        return s.gamma ** (epochs_done // s.step_size)
    return 1.0


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's current rate without the groups' ``lr_mult`` (``train.optimizer.lr`` times
    the schedule factor): a group's rate with multiplier 1 (any group has one without
    ``lr_mult``), else the first group's divided by its non-zero multiplier."""
    groups = optimizer.param_groups
    for group in groups:
        if group.get("lr_mult", 1.0) == 1.0:
            return float(group["lr"])
    scaled = next((g for g in groups if g["lr_mult"]), groups[0])
    return float(scaled["lr"] / scaled["lr_mult"]) if scaled["lr_mult"] else float(scaled["lr"])


# ----------------------------------------------------------------------------- the loop
@dataclass
class LoopState:
    """What a checkpoint restores besides the model and optimiser."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float = float("-inf")
    best_epoch: int | None = None
    best_metrics: dict[str, Any] | None = None
    last_metrics: dict[str, Any] | None = None
    wall_time: float = 0.0
    train_images: int = 0
    train_seconds: float = 0.0
    peak_memory_mb: float | None = None  # stitch.memory: CUDA max allocated, else the process's max RSS


class Callback:
    """A hook into the loop (in the style of mmengine's hooks): subclass it and override what you
    need; every method does nothing by default. The loop calls the callbacks in the order given.

    The per-step hooks get every micro-step's values in step order, but only when the host reads
    them (``train.sync_every``, :mod:`stitch.device_sums`): after every micro-step on the CPU,
    in batches of up to 50 steps on CUDA (after the optimiser step of the step that reads them),
    so that no step waits for the GPU."""

    def on_step(self, epoch: int, step: int, loss: float, images: int) -> None:
        """Each optimiser micro-step: its loss and the images in its batch."""

    def on_losses(self, epoch: int, step: int, parts: dict[str, float]) -> None:
        """Each micro-step whose loss has two or more named parts: the parts."""

    def on_eval(self, epoch: int, model: nn.Module) -> None:
        """After an epoch's evaluation (before the epoch's checkpoint)."""

    def on_epoch(self, state: LoopState, record: dict[str, Any]) -> None:
        """After every epoch, once its checkpoint is written (or, with ``train.async_checkpoint``,
        handed to the background writer); may raise :class:`StopTraining`."""


def deliver(callbacks: Sequence[Callback], epoch: int, read: Sequence[StepValues]) -> None:
    """Hand the micro-steps read from the device to the callbacks' per-step hooks."""
    for values in read:
        if values.parts:
            for cb in callbacks:
                cb.on_losses(epoch, values.step, values.parts)
        for cb in callbacks:
            cb.on_step(epoch, values.step, values.loss, values.images)


def first_non_finite(read: Sequence[StepValues]) -> int | None:
    """Index in ``read`` of the first micro-step whose loss is not finite, if any."""
    return next((i for i, values in enumerate(read) if not math.isfinite(values.loss)), None)


def check_finite(callbacks: Sequence[Callback], epoch: int, read: Sequence[StepValues]) -> None:
    """Raise :class:`Diverged` at the first micro-step of ``read`` whose loss is not finite, after
    handing the steps before it to the callbacks. Under DDP the ranks agree first (one all-reduce):
    a loss that is not finite on another rank stops this one too, at the same step."""
    bad = first_non_finite(read)
    if bad is not None:
        deliver(callbacks, epoch, read[:bad])
    elsewhere = any_rank(bad is not None)[0] if is_distributed() else False
    if bad is not None:
        raise Diverged(f"training loss is {read[bad].loss} at epoch {epoch}, step {read[bad].step}")
    if elsewhere:
        deliver(callbacks, epoch, read)
        step = read[-1].step if read else 0
        raise Diverged(f"training loss is not finite on another rank at epoch {epoch}, step {step}")


def epoch_totals(sums: EpochSums) -> tuple[float, int, dict[str, float]]:
    """The epoch's loss sum, images and loss-part sums on the host, summed over the DDP ranks (one
    all-reduce; the sums themselves without ranks)."""
    loss_sum, part_sums = sums.host()
    if not is_distributed():
        return loss_sum, sums.images, part_sums
    total = sum_over_ranks([loss_sum, float(sums.images), *part_sums.values()])
    return total[0], round(total[1]), dict(zip(part_sums, total[2:], strict=True))


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` (its gradients averaged over
    the ranks in backward; BatchNorm buffers broadcast from rank 0 at every forward); the module
    itself stays what checkpoints and evaluation see."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None  # CUDA: one device per rank (untested here)
    return DistributedDataParallel(model, device_ids=ids)


def train(
    model: nn.Module,
    task: Task,
    train_set: Dataset[Any],
    val_set: Dataset[Any],
    cfg: TrainCfg,
    seed: int,
    device: torch.device,
    ckpt_dir: Path,
    primary: str,
    num_workers: int = 0,
    callbacks: Sequence[Callback] = (),
    stop_after: int | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    param_groups: Sequence[Any] | None = None,
    batch_transform: Callable[[Any], Any] | None = None,
) -> LoopState:
    """Train ``model`` for ``cfg.epochs`` epochs, resuming from ``ckpt_dir`` when it holds a run.

    ``stop_after`` ends the call after that many completed epochs (as an interruption would),
    which is how resume is tested. ``collate_fn`` builds a batch from dataset items (detection
    data: lists of images and target dicts); torch's default stacks tensors. ``param_groups`` is
    what the optimiser gets (:func:`stitch.param_groups.param_groups`: groups with their own
    ``lr``, ``weight_decay`` and ``lr_mult``); by default every trainable parameter alike. The
    schedule scales every group's rate by the same factor; the history's ``lr`` is the base rate.
    ``batch_transform`` is applied to every training batch right after it is moved to ``device``
    (not to validation batches): the data's device-side augmentation; it should draw from torch's
    generators, which the epoch's seeding and a mid-epoch checkpoint cover.

    Speed settings of ``cfg`` (:doc:`docs/running.md`): ``precision`` (autocast, and grad scaling
    for fp16, :mod:`stitch.precision`), ``channels_last``, ``compile``
    (:func:`stitch.compile_model.compile_for_training`) and ``sync_every``: the epoch's loss sums
    stay on the device and the host reads them every ``sync_every`` micro-steps and at the epoch's
    end (:mod:`stitch.device_sums`); a non-finite loss raises :class:`Diverged` naming its epoch
    and micro-step at the first read after it, so within ``sync_every`` steps.

    Ctrl-C (:mod:`stitch.interrupt`) stops at the next optimiser-step boundary, writes
    ``ckpt_dir/interrupted.pt`` (the states, the loop state, the epoch's micro-steps done and
    running sums, the random generators, and the batch size and accumulation it was made with) and
    raises :class:`TrainingInterrupted`. The next call with the same batch size and accumulation
    continues exactly there: it re-seeds the epoch, draws (without training on them) the batches
    already trained on, so the sampler and data workers are where they were, then puts back the
    saved generators and sums. Checkpoints that do not fit are skipped (:mod:`stitch.checkpoints`).

    With ``cfg.async_checkpoint`` (automatic: on CUDA) an epoch's checkpoint files are written by
    a background thread from a host copy of the states while the next epoch trains
    (:mod:`stitch.checkpoint_writer`); the write in flight is waited for (and its error raised
    here) before the next one, before ``interrupted.pt``, and before this call returns or raises.
    The ``on_epoch`` callbacks may then run before their epoch's files are on disk.
    """
    set_deterministic(cfg.deterministic)  # and cuDNN benchmark when not deterministic
    model.to(device)
    if cfg.channels_last:
        model_channels_last(model)
    if cfg.compile:
        from stitch.compile_model import compile_for_training

        model = compile_for_training(model)
    ddp = is_distributed()  # under torchrun: rank 0 alone evaluates and writes
    main = is_main()
    net = wrap_ddp(model, device) if ddp else model  # what the training forward runs through
    shard = (rank(), world_size()) if ddp else None
    loader, val_loader, sampler_gen = make_loaders(
        train_set, val_set, cfg.batch_size, num_workers, device, collate_fn, shard
    )
    micro_per_epoch = len(loader)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    params = param_groups if param_groups is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(list(params), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, cfg))
    precision = training_precision(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.scale)
    objects = TrainingObjects(model, optimizer, scheduler, scaler)
    optimizer_step = ScheduledStep(optimizer, scheduler, scaler)
    sync_every = sync_interval(cfg.sync_every, device)
    state = LoopState()
    reset_peak_memory(device)

    ck = restore_latest(ckpt_dir, device, objects)
    if ddp:
        any_rank(False)  # a barrier: every rank has read the checkpoint before rank 0 prunes
    if ck is not None:
        state = LoopState(**ck["state"])
    if ck is not None and main:
        repair_best(ckpt_dir / "best.pt", state.best_epoch, state.epoch, model, state.best_metrics, device)
        prune_checkpoints(ckpt_dir, state.epoch, cfg.keep_last)  # a kill before the pruning of its epoch
    made_with = {"batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum}
    mid = None
    if state.epoch < cfg.epochs and (stop_after is None or state.epoch < stop_after):
        mid = restore_interrupted(ckpt_dir, device, objects, state.epoch + 1, made_with)
    if mid is not None:
        state = LoopState(**mid["state"])

    stopping = False  # under DDP: a Ctrl-C the ranks agreed on at a sync point
    writer = CheckpointWriter(background_writes(cfg.async_checkpoint, device))
    with stop_on_sigint() as stop, writer:  # leaving it waits for the epoch checkpoint in flight
        while state.epoch < cfg.epochs:
            if stop_after is not None and state.epoch >= stop_after:
                break
            epoch = state.epoch + 1
            es = epoch_seed(seed, epoch)
            seed_everything(es)
            sampler_gen.manual_seed(es)
            model.train()
            batches = iter(loader)
            done, seconds_before, sums = 0, 0.0, EpochSums(device)
            if mid is not None:  # Ctrl-C stopped this epoch after `done` micro-steps
                done, seconds_before = mid["steps"], mid["seconds"]
                if main:  # the saved sums are over every rank: rank 0 alone carries them on
                    sums = EpochSums(device, mid["loss_sum"], mid["images"], mid["part_sums"])
                for _ in range(done):  # the batches trained on: the sampler and workers move on alike
                    next(batches)
                set_rng_state(mid["rng"])
                mid = None
            start = time.perf_counter() - seconds_before
            optimizer.zero_grad(set_to_none=True)
            for i, batch in enumerate(batches, start=done):
                batch = to_device(batch, device)
                if batch_transform is not None:
                    batch = batch_transform(batch)
                if cfg.channels_last:
                    batch = batch_channels_last(batch)
                with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.autocast):
                    loss, parts = task.loss(net, batch)
                sums.add(i + 1, batch_images(batch), loss, parts)
                read: list[StepValues] = []
                if (i + 1) % sync_every == 0 or i + 1 == micro_per_epoch:  # the host reads: a sync
                    read = sums.flush()
                    check_finite(callbacks, epoch, read)  # before a non-finite loss reaches a step
                    stopping = stopping or (ddp and any_rank(stop.requested)[0])
                # the mean over the micro-batches of one optimiser step (the last group may be short)
                group = min(cfg.grad_accum, micro_per_epoch - (i // cfg.grad_accum) * cfg.grad_accum)
                boundary = (i + 1) % cfg.grad_accum == 0 or i + 1 == micro_per_epoch
                with net.no_sync() if ddp and not boundary else contextlib.nullcontext():  # type: ignore[operator]
                    scaler.scale(loss / group).backward()
                if boundary:
                    optimizer_step(model.parameters(), cfg.clip_grad_norm)
                deliver(callbacks, epoch, read)
                if (stopping if ddp else stop.requested) and boundary:
                    read = sums.flush()
                    check_finite(callbacks, epoch, read)
                    deliver(callbacks, epoch, read)
                    path = ckpt_dir / INTERRUPTED
                    writer.join()  # the last epoch's files first: they end by removing interrupted.pt
                    loss_sum, images, part_sums = epoch_totals(sums)
                    totals = {"loss_sum": loss_sum, "images": images, "part_sums": part_sums}
                    seconds = time.perf_counter() - start
                    if main:
                        save_checkpoint(
                            {
                                **objects.state_dicts(),
                                "state": state.__dict__,
                                **{"epoch": epoch, "steps": i + 1, **totals, "seconds": seconds},
                                **{"rng": rng_state(), "made_with": made_with},
                            },
                            path,
                        )
                    raise TrainingInterrupted(epoch, i + 1, path)
            loss_sum, images, part_sums = epoch_totals(sums)  # the epoch's last read
            train_seconds = time.perf_counter() - start
            record: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": loss_sum / max(images, 1),
                **{loss_key(part): total / max(images, 1) for part, total in part_sums.items()},
                "lr": base_lr(optimizer),
                "train_images_per_s": images / max(train_seconds, 1e-9),
            }
            if main and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
                metrics = task.evaluate(model, val_loader, device)
                record.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
                state.last_metrics = metrics
                value = metrics[primary]
                improved = not math.isnan(value) and value > state.best_value
                if improved:
                    state.best_value, state.best_epoch, state.best_metrics = value, epoch, metrics
                for cb in callbacks:
                    cb.on_eval(epoch, model)
            state.epoch = epoch
            state.train_images += images
            state.train_seconds += train_seconds
            state.wall_time += time.perf_counter() - start
            state.peak_memory_mb = larger(state.peak_memory_mb, peak_memory_mb(device))
            record["seconds"] = time.perf_counter() - start
            state.history.append(record)
            if main:  # in the background when train.async_checkpoint: the next epoch trains meanwhile
                writer.join()  # one write in flight and one host copy of the states at a time
                snapshot = epoch_checkpoint(
                    ckpt_dir, objects, state.__dict__, cfg.keep_last, writer.background
                )
                writer.submit(snapshot.write)
            for cb in callbacks:
                cb.on_epoch(state, record)
        writer.join()
        if any_rank(stop.requested)[0]:  # Ctrl-C after the last step (evaluation, checkpoint): all is saved
            last = ckpt_dir / f"epoch-{state.epoch:04d}.pt"
            raise TrainingInterrupted(state.epoch, micro_per_epoch, last)
    return state

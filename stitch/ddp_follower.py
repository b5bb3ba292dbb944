"""The ranks other than 0 of a torchrun job (``stitch run … --nproc-per-node N``): they train the
runs rank 0 announces, in rank 0's order, and write nothing.

Rank 0 (:meth:`stitch.session.RunSession.train`) decides which runs to train (from the results
store only it opens) and, for each, announces a :class:`RunAnnouncement` once the run's
checkpoint folder is ready; ``None`` ends the job. A follower builds the same model (same variant
and seed), trains it in lockstep (:func:`stitch.engine.train`: the gradients are averaged in
backward; the sums, flags and stop decisions agreed at the sync points) and leaves evaluation,
checkpoints, the store, TensorBoard, the log and the report to rank 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stitch.build import stitch_variant
from stitch.config import Experiment, TrainCfg
from stitch.distributed import barrier, next_announcement
from stitch.engine import Diverged, StopTraining, train
from stitch.param_groups import optimizer_params
from stitch.runs import experiment_data, plan_runs
from stitch.tasks import make_task
from stitch.validate import validate_experiment


@dataclass(frozen=True)
class RunAnnouncement:
    """What rank 0 tells the other ranks before training a run."""

    run_id: str
    ckpt_dir: str
    train_cfg: TrainCfg  # epochs of the plan, the micro-batch and accumulation rank 0 trains with
    stop_after: int | None


def follow_main_rank(
    exp: Experiment, device: torch.device, epochs: int | None, seeds: Sequence[int] | None
) -> list[Any]:
    """A rank other than 0: once rank 0 has prepared the data (a barrier), build the same data and
    plan, then train each announced run until rank 0 announces ``None``; no rows (rank 0 stores
    them)."""
    barrier()  # rank 0 has built (and cached) the data: reading it now races with no writer
    exp, data = experiment_data(exp)
    validate_experiment(exp, data.num_classes)
    plans = {plan.run_id: plan for plan in plan_runs(exp, epochs, seeds)}
    task = make_task(exp.cfg.task, data, exp.cfg.train.loss)
    assert exp.cfg.data is not None  # the data was built from it
    while (message := next_announcement()) is not None:
        plan = plans[message.run_id]
        built = stitch_variant(exp, plan.variant, plan.seed)
        try:
            train(
                built.model,
                task,
                data.train,
                data.val,
                message.train_cfg,
                plan.seed,
                device,
                Path(message.ckpt_dir),
                exp.cfg.primary_metric,
                num_workers=exp.cfg.data.num_workers,
                stop_after=message.stop_after,
                collate_fn=getattr(data, "collate_fn", None),
                param_groups=optimizer_params(exp, built, plan.seed),
                batch_transform=getattr(data, "train_batch_transform", None),
            )
        except (Diverged, StopTraining):  # every rank stopped at the same step; rank 0 stores why
            continue
    return []

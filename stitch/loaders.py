"""The DataLoaders of a run: batch size, ``drop_last``, shuffling from a seeded generator, and data
workers that leave Ctrl-C to the main process. The engine and the benchmarks in ``bench/`` build
their loaders here, so a benchmark times exactly what a run uses."""

from __future__ import annotations

import math
import random
import signal
from collections.abc import Callable, Sized
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def _seed_worker(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the main process decides (stitch.interrupt); a
    # worker that died of it would fail the step the loop is finishing
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def make_loaders(
    train_set: Dataset[Any],
    val_set: Dataset[Any],
    batch_size: int,
    num_workers: int,
    device: torch.device,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> tuple[DataLoader[Any], DataLoader[Any], torch.Generator]:
    """The training and validation loaders of a run, and the generator of the training sampler
    (re-seeded every epoch from :func:`stitch.seeding.epoch_seed`): the batch size and ``drop_last`` of
    :func:`train_batches`, seeded workers that leave Ctrl-C to the main process."""
    bs, drop_last, _ = train_batches(len(cast(Sized, train_set)), batch_size)
    generator = torch.Generator()
    loader = DataLoader(
        train_set,
        batch_size=bs,
        shuffle=True,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
        worker_init_fn=_seed_worker,
        pin_memory=device.type == "cuda",
        collate_fn=collate_fn,
    )
    val_loader = DataLoader(
        val_set, batch_size=bs, shuffle=False, num_workers=num_workers, collate_fn=collate_fn
    )
    return loader, val_loader, generator


def train_batches(n_images: int, batch_size: int) -> tuple[int, bool, int]:
    """``(batch size, drop_last, batches per epoch)`` of the training loader.

    The last incomplete batch is dropped only when it would hold a single image (BatchNorm
    cannot train on one)."""
    bs = max(1, min(batch_size, n_images))
    drop_last = n_images % bs == 1 and n_images > 1
    return bs, drop_last, (n_images // bs if drop_last else math.ceil(n_images / bs))

"""The DataLoaders of a run: batch size, ``drop_last``, shuffling from a seeded generator, and data
workers that leave Ctrl-C to the main process. The engine and the benchmarks in ``bench/`` build
their loaders here, so a benchmark times exactly what a run uses.

With ``num_workers > 0`` the workers are persistent (started once per loader, not every epoch)
and, on CUDA, batches are pinned. A fresh worker of torch is seeded from a base seed that the
loader draws from its generator before the epoch's shuffle, plus the worker's id; persistent
workers would keep their streams across epochs instead. :class:`EpochBatchSampler` draws that
base seed at the start of every epoch, from the same generator at the same point, and tags the
epoch's indices with it; :class:`EpochSeededDataset` re-seeds a worker as torch seeds a fresh one
(and as :func:`seed_worker` then does) at its first sample of each epoch. So every epoch sees the
shuffles and augmentations of fresh workers, bit for bit, and a resumed run the same.

A training set with ``on_device = True`` (``data.cache: device``,
:class:`stitch.data.device_augment.DeviceTrainSet`) is placed on the device here and loaded
without workers or pinned memory (its items are small plans; the pixels are on the device).
"""

from __future__ import annotations

import math
import random
import signal
from collections.abc import Callable, Iterator, Sized
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, get_worker_info

from stitch.distributed import RankSlice


def seed_worker(_worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: Ctrl-C is left to the main process
    (:mod:`stitch.interrupt`; a worker that died of it would fail the step the loop is finishing),
    and Python's and NumPy's generators are seeded from the worker's torch seed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def seed_like_fresh_worker(base_seed: int, worker_id: int) -> None:
    """Seed this process's generators as torch seeds a fresh worker ``worker_id`` from ``base_seed``
    (torch ``base_seed + worker_id``) and :func:`seed_worker` then re-seeds Python's and NumPy's
    (from that torch seed; what torch gave them first is overwritten there)."""
    seed = base_seed + worker_id
    torch.manual_seed(seed)
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


class EpochBatchSampler(BatchSampler):
    """The batches of ``DataLoader(shuffle=True, generator=generator)``, each index tagged
    ``(epoch token, base seed, index)``: every iteration first draws the base seed a fresh
    multi-worker iterator would draw from ``generator``, then shuffles with it, in that order."""

    def __init__(self, n: int, batch_size: int, drop_last: bool, generator: torch.Generator) -> None:
        super().__init__(RandomSampler(range(n), generator=generator), batch_size, drop_last)
        self.generator = generator
        self.epochs = 0

    def __iter__(self) -> Iterator[list[Any]]:
        base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
        self.epochs += 1
        token = self.epochs
        for batch in super().__iter__():
            yield [(token, base_seed, i) for i in batch]


class EpochSeededDataset(Dataset[Any]):
    """``dataset`` read with :class:`EpochBatchSampler`'s tagged indices: a worker seen a new epoch
    token re-seeds itself (:func:`seed_like_fresh_worker`) before loading the sample."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset
        self.token: int | None = None

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        token, base_seed, i = key
        if token != self.token:
            info = get_worker_info()
            seed_like_fresh_worker(base_seed, info.id if info is not None else 0)
            self.token = token
        return self.dataset[i]


def make_loaders(
    train_set: Dataset[Any],
    val_set: Dataset[Any],
    batch_size: int,
    num_workers: int,
    device: torch.device,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    shard: tuple[int, int] | None = None,
) -> tuple[DataLoader[Any], DataLoader[Any], torch.Generator]:
    """The training and validation loaders of a run, and the generator of the training sampler
    (re-seeded every epoch from :func:`stitch.seeding.epoch_seed`): the batch size and ``drop_last`` of
    :func:`train_batches`; persistent, seeded workers that leave Ctrl-C to the main process (see
    the module docstring); batches pinned on CUDA. A training set on the device (``on_device``) is
    placed there and loaded in the main process with its own ``collate``.

    ``shard = (rank, world_size)`` (DistributedDataParallel): ``batch_size`` stays the global batch;
    every rank draws the same seeded global batches and takes its slice of each
    (:class:`stitch.distributed.RankSlice`)."""
    n = len(cast(Sized, train_set))
    bs, drop_last, _ = train_batches(n, batch_size)
    generator = torch.Generator()
    pin = device.type == "cuda"
    val_loader = DataLoader(
        val_set,
        batch_size=bs,
        shuffle=False,
        num_workers=num_workers,
        worker_init_fn=seed_worker if num_workers else None,
        persistent_workers=num_workers > 0,
        pin_memory=pin,
        collate_fn=collate_fn,
    )
    loader = train_loader(train_set, bs, drop_last, num_workers, device, collate_fn, generator, shard)
    return loader, val_loader, generator


def train_loader(
    train_set: Dataset[Any],
    batch_size: int,
    drop_last: bool,
    num_workers: int,
    device: torch.device,
    collate_fn: Callable[[list[Any]], Any] | None,
    generator: torch.Generator,
    shard: tuple[int, int] | None = None,
) -> DataLoader[Any]:
    """The training loader: the seeded batches ``generator`` draws (the loader's base seed first,
    then the epoch's permutation, as torch's shuffling loader draws them); with ``shard = (rank,
    world_size)`` each global batch cut to this rank's slice (:class:`RankSlice`). Workers get an
    :class:`EpochBatchSampler` and are re-seeded every epoch; a training set on the device is
    placed there and loaded in the main process with its own ``collate``, unpinned."""
    n = len(cast(Sized, train_set))
    pin = device.type == "cuda"
    on_device = getattr(train_set, "on_device", False)

    def cut(batches: Any) -> Any:
        return batches if shard is None else RankSlice(batches, n, batch_size, shard)

    if num_workers > 0 and not on_device:
        return DataLoader(
            EpochSeededDataset(train_set),
            batch_sampler=cut(EpochBatchSampler(n, batch_size, drop_last, generator)),
            num_workers=num_workers,
            # the loader's own base seed is unused (EpochSeededDataset re-seeds): drawn from a
            # generator of its own, it leaves the sampler's and the global streams alone
            generator=torch.Generator(),
            worker_init_fn=seed_worker,
            persistent_workers=True,
            pin_memory=pin,
            collate_fn=collate_fn,
        )
    if on_device:
        cast(Any, train_set).place(device)
        collate_fn, pin = cast(Any, train_set).collate, False
    batches = BatchSampler(RandomSampler(range(n), generator=generator), batch_size, drop_last)
    return DataLoader(
        train_set,
        batch_sampler=cut(batches),
        generator=generator,  # the loader draws its base seed from it first, as a shuffling loader does
        pin_memory=pin,
        collate_fn=collate_fn,
    )


def train_batches(n_images: int, batch_size: int) -> tuple[int, bool, int]:
    """``(batch size, drop_last, batches per epoch)`` of the training loader.

    The last incomplete batch is dropped only when it would hold a single image (BatchNorm
    cannot train on one)."""
    bs = max(1, min(batch_size, n_images))
    drop_last = n_images % bs == 1 and n_images > 1
    return bs, drop_last, (n_images // bs if drop_last else math.ceil(n_images / bs))

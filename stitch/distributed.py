"""One run on several processes (``torchrun``, DistributedDataParallel): the process group, this
process's rank, the sharded training batches, the cross-rank sums and agreements, and the
``--nproc-per-node`` launcher.

Without torchrun (``WORLD_SIZE`` unset or 1) nothing here starts a process group and every helper
is the single-process identity: :func:`is_distributed` is false, :func:`is_main` true, the sums and
flags come back unchanged without a collective. Under torchrun every rank walks the same runs;
rank 0 alone writes (store, checkpoints, TensorBoard, log, report) and evaluates; the others train
what rank 0 announces (:func:`announce`, :func:`next_announcement`, :mod:`stitch.ddp_follower`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from stitch.errors import StitchError

#: how long a rank waits in a collective for the others (rank 0 evaluates and writes while the
#: others wait at their next all-reduce)
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Rank:
    """This process's place in a torchrun job and its training device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0


def world_size_from_env() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 without torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def start_distributed(device: torch.device) -> Rank | None:
    """Under torchrun (``WORLD_SIZE`` > 1): the process group (NCCL with ``cuda:LOCAL_RANK`` when
    ``device`` is CUDA, gloo on the CPU) and this process's :class:`Rank`; else ``None``."""
    world = world_size_from_env()
    if world <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":  # CUDA/NCCL: untested here (no GPU on the CI machine)
        if local_rank >= torch.cuda.device_count():
            raise StitchError(
                f"torchrun rank {rank}: LOCAL_RANK {local_rank} but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); use --nproc-per-node at most that"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return Rank(rank, world, local_rank, device)


def is_distributed() -> bool:
    """Whether this process is one of several ranks of a started process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many ranks train the run (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes: rank 0, or the only process."""
    return rank() == 0


def collective_device() -> torch.device:
    """Where the collectives' tensors live: this rank's CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":  # CUDA only
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on at least one rank (one all-reduce); the flags themselves without ranks."""
    if not is_distributed():
        return tuple(flags)
    t = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """``values`` summed element-wise over the ranks (float64, one all-reduce); unchanged without
    ranks."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def barrier() -> None:
    """Wait until every rank is here (an all-reduce, which every backend has); nothing without
    ranks."""
    if is_distributed():
        any_rank(False)


def check_ddp_options(world: int, batch_size: int, jobs: Any, devices: Any, storage: Any) -> None:
    """One-line refusals of what a torchrun job cannot do: ``--jobs``, ``--devices``, ``--storage``
    (one run over several processes is the opposite of several runs at once), and a global
    ``train.batch_size`` that the ``world`` processes cannot share evenly."""
    for flag, given in (
        ("--jobs", jobs not in (None, 1, "1")),
        ("--devices", devices),
        ("--storage", storage),
    ):
        if given:
            raise StitchError(
                f"{flag} under torchrun (--nproc-per-node): one run over several processes cannot also "
                f"train several runs at once; leave out {flag} or --nproc-per-node"
            )
    if batch_size % world:
        raise StitchError(
            f"train.batch_size {batch_size} with {world} DDP processes: the global batch must divide "
            f"evenly (each process takes batch_size / {world}); use a multiple of {world}"
        )


def announce(message: Any) -> None:
    """Rank 0: send ``message`` (picklable) to every other rank (they wait in
    :func:`next_announcement`); nothing without ranks."""
    if is_distributed():
        dist.broadcast_object_list([message], src=0)


def next_announcement() -> Any:
    """A rank other than 0: the next message rank 0 :func:`announce` s."""
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class RankSlice(Sampler[list[Any]]):
    """This rank's part of every batch of ``batches`` (a batch sampler giving the GLOBAL batches,
    drawn from the same seeded generator on every rank): rank ``r`` of ``world`` takes the r-th of
    ``world`` nearly equal consecutive slices. A last batch with fewer items than ranks is dropped
    (every rank must take the same number of steps)."""

    def __init__(self, batches: Iterable[list[Any]], n_items: int, batch_size: int, shard: tuple[int, int]):
        self.batches, self.rank, self.world = batches, shard[0], shard[1]
        full, last = divmod(n_items, batch_size)
        self.length = full + (1 if last >= self.world else 0)
        if getattr(batches, "drop_last", False):
            self.length = full

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[list[Any]]:
        for k, batch in enumerate(self.batches):
            if k >= self.length:
                break
            n = len(batch)
            lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
            yield batch[lo:hi]


def check_nproc(nproc: int, device: str | None) -> None:
    """One line when ``--nproc-per-node`` is below 1 or, on CUDA (``device`` unset or CUDA), above
    the number of visible GPUs (one process per GPU)."""
    if nproc < 1:
        raise StitchError(f"--nproc-per-node {nproc}: must be at least 1")
    on_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if on_cuda and nproc > torch.cuda.device_count():  # CUDA only
        raise StitchError(
            f"--nproc-per-node {nproc}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            "use at most that many processes (one per GPU)"
        )


def launch_torchrun(nproc: int, argv: Sequence[str], device: str | None) -> int:
    """``stitch run … --nproc-per-node N``: the same command line, without the flag, under torchrun
    on this machine (``torchrun --standalone --nproc-per-node N -m stitch …``); its exit status: a
    failed worker's (2 for a one-line error), 130 after Ctrl-C (torchrun passes it on to the
    workers, which stop at the next step with a checkpoint, as one process does)."""
    check_nproc(nproc, device)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(nproc), "-m", "stitch", *without_nproc(argv)]
    )
    try:
        run(args)
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values()]
        return next((c for c in codes if c > 0), 1)
    except SignalException as exc:  # Ctrl-C (SIGINT), or SIGTERM: the workers have stopped
        return 130 if exc.sigval == signal.SIGINT else 128 + int(exc.sigval)
    return 0


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--nproc-per-node N`` (or ``--nproc-per-node=N``) taken out."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            out.append(arg)
    return out

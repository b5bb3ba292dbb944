"""Harness overhead: stitch's training loop against a minimal hand-written PyTorch loop.

Both sides train the same freshly built model (``stitch_variant``, same seed, so the same
weights), from the same ``Dataset`` objects through the engine's own loaders
(:func:`stitch.loaders.make_loaders`: batch size, ``drop_last``, shuffle, seeded workers,
``pin_memory`` on CUDA, the data's collate function), the same optimiser and parameter groups
(:func:`stitch.engine.make_optimizer` over :func:`stitch.param_groups.optimizer_params`), the same
learning-rate schedule (a ``LambdaLR`` over :func:`stitch.engine.lr_factor`) and the same
per-epoch seeding, so they draw the same batches and augmentations. The hand loop computes the
task's loss with the task's own functions (``segmentation_logits``, cross-entropy, soft Dice) and
never synchronises with the host inside an epoch.

stitch's side is ``RunSession.train`` exactly as ``stitch run --quiet`` drives it (results store,
TensorBoard, progress and log callbacks; ``--harness engine`` calls :func:`stitch.engine.train`
alone, with no callbacks but the clock's). The sides run interleaved in one process, stitch first
in even rounds and hand first in odd ones (A B, B A, ...), after one warm-up round that is not
counted; the figures are medians over
``--rounds`` rounds.

Timed, per side and round, with ``time.perf_counter`` after ``torch.cuda.synchronize`` on CUDA:

- ``train``: for every epoch, from the epoch's start to its last optimiser step. Epoch 1 starts
  when the side is called (so it includes each side's setup: loaders, optimiser, schedule; for
  stitch also its run bookkeeping); a later epoch starts when the previous epoch's work is done
  (stitch: its ``on_epoch`` callbacks; hand: its evaluation and checkpoint). Evaluation and
  checkpoints are outside this region on both sides. **This is the figure of the goal
  (stitch/hand >= 0.99).**
- ``total``: the whole call. The hand side then also evaluates on the validation set after every
  epoch (``task.evaluate``, as stitch does) and writes one checkpoint of the model, optimiser and
  schedule states per epoch with ``torch.save``; stitch also writes ``best.pt`` when val improves,
  its results row, TensorBoard events and a prediction grid.

Prints one JSON object: images/s of each side (medians) and the ratios stitch/hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_setup import Bench, common_args, environment, load_bench, now

from stitch.config import TrainCfg
from stitch.devices import pick_device, to_device
from stitch.engine import Callback, LoopState, batch_images, lr_factor, make_optimizer, train
from stitch.loaders import make_loaders, train_batches
from stitch.progress import Progress
from stitch.seeding import epoch_seed, seed_everything
from stitch.session import RunSession
from stitch.store import ResultStore
from stitch.tasks.segmentation import segmentation_logits, soft_dice_loss


class EpochClock(Callback):
    """Sums the synchronised time from each epoch's start to its last micro-step."""

    def __init__(self, device: torch.device, steps_per_epoch: int) -> None:
        self.device, self.steps = device, steps_per_epoch
        self.start = 0.0
        self.train_s = 0.0

    def on_step(self, epoch: int, step: int, loss: float, images: int) -> None:
        if step == self.steps:
            self.train_s += now(self.device) - self.start

    def on_epoch(self, state: LoopState, record: dict[str, Any]) -> None:
        self.start = now(self.device)


def task_loss(task: Any, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The segmentation task's loss (``ce``, ``dice`` or ``ce+dice``), with no host sync."""
    names = task.loss_name.split("+")
    loss = torch.zeros((), device=logits.device)
    if "ce" in names:
        loss = loss + F.cross_entropy(logits.float(), target, ignore_index=task.ignore_index)
    if "dice" in names:
        loss = loss + soft_dice_loss(logits, target, task.ignore_index)
    return loss


def hand_loop(
    bench: Bench,
    model: torch.nn.Module,
    params: list[Any],
    cfg: TrainCfg,
    args: argparse.Namespace,
    ckpt: Path,
) -> tuple[float, float, int]:
    """A minimal training loop; returns ``(train seconds, total seconds, images trained on)``."""
    device, data, task = args.dev, bench.data, bench.task
    t0 = start = now(device)
    model.to(device)
    collate = getattr(data, "collate_fn", None)
    transform = getattr(data, "train_batch_transform", None)
    loader, val_loader, gen = make_loaders(
        data.train, data.val, cfg.batch_size, args.num_workers, device, collate
    )
    steps = len(loader)
    optimizer = make_optimizer(params, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, cfg))
    train_s, images = 0.0, 0
    for epoch in range(1, cfg.epochs + 1):
        es = epoch_seed(args.seed, epoch)
        seed_everything(es)
        gen.manual_seed(es)
        model.train()
        for batch in loader:
            batch = to_device(batch, device)
            if transform is not None:  # data.cache: device (the run's batch transform)
                batch = transform(batch)
            loss = task_loss(task, segmentation_logits(model(batch["image"])), batch["mask"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            images += batch_images(batch)
        train_s += now(device) - start
        task.evaluate(model, val_loader, device)
        states = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        torch.save({**states, "scheduler": scheduler.state_dict()}, ckpt / f"epoch-{epoch}.pt")
        start = now(device)
    return train_s, now(device) - t0, images


def stitch_loop(
    bench: Bench,
    session: RunSession | None,
    variant: str,
    cfg: TrainCfg,
    args: argparse.Namespace,
    ckpt: Path,
) -> tuple[float, float, int]:
    """stitch's loop (the session's or the engine's); returns ``(train s, total s, images)``."""
    device = args.dev
    built, params = bench.model(variant, args.seed)
    _, _, steps = train_batches(len(bench.data.train), cfg.batch_size)
    clock = EpochClock(device, steps)
    t0 = clock.start = now(device)
    if session is not None:
        row = session.train(bench.plan(variant), force=True, callbacks=[clock], built=built, test=False)
        if row.status != "done":
            raise SystemExit(f"stitch's run ended {row.status}: {row.error}")
    else:
        assert bench.exp.cfg.data is not None
        train(
            built.model,
            bench.task,
            bench.data.train,
            bench.data.val,
            cfg,
            args.seed,
            device,
            ckpt,
            bench.exp.cfg.primary_metric,
            num_workers=args.num_workers,
            callbacks=[clock],
            collate_fn=getattr(bench.data, "collate_fn", None),
            param_groups=params,
        )
    total = now(device) - t0
    bs, drop_last, _ = train_batches(len(bench.data.train), cfg.batch_size)
    n = len(bench.data.train)  # the images stitch trains on: the hand loop counts the same
    return clock.train_s, total, cfg.epochs * ((n // bs) * bs if drop_last else n)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["Baseline", "+CA"])
    parser.add_argument("--harness", choices=["session", "engine"], default="session")
    parser.add_argument("--num-workers", type=int, default=None, help="default: the experiment's")
    args = parser.parse_args(argv)
    args.dev = pick_device(args.device)
    bench = load_bench(args)
    assert bench.exp.cfg.data is not None
    if args.num_workers is None:
        args.num_workers = bench.exp.cfg.data.num_workers
    if bench.exp.cfg.task != "segmentation":
        raise SystemExit(
            "the hand-written loop computes the segmentation loss; use a segmentation experiment"
        )
    cfg = bench.exp.cfg.train.model_copy(update={"epochs": args.epochs})
    out: dict[str, Any] = {
        "benchmark": "harness_overhead",
        "experiment": str(Path(args.experiment).name),
        "data": args.data if args.data == "shapes" else bench.exp.cfg.data.dataset,
        "cache": bench.exp.cfg.data.cache,
        "train_images": len(bench.data.train),
        "batch_size": cfg.batch_size,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "harness": args.harness,
        "num_workers": args.num_workers,
        "environment": environment(args.dev),
        "variants": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        log = logging.getLogger(f"bench.harness.{run_dir}")
        log.propagate = False
        log.addHandler(logging.FileHandler(run_dir / "log.txt"))
        # the progress lines `stitch run --quiet` prints go to stderr: stdout is the JSON
        with (
            contextlib.redirect_stdout(sys.stderr),
            ResultStore(run_dir / "runs.sqlite") as store,
            Progress(quiet=True, log=log) as progress,
        ):
            session = None
            if args.harness == "session":
                session = RunSession(bench.exp, bench.data, bench.task, store, args.dev, run_dir, progress)
            for v, variant in enumerate(args.variants):
                rows: dict[str, list[tuple[float, float, int]]] = {"stitch": [], "hand": []}
                for r in range(args.rounds + 1):  # round 0 warms up and is not counted
                    hand_ckpt = Path(tmp) / f"h{v}-{r}"
                    hand_ckpt.mkdir()
                    built, params = bench.model(variant, args.seed)
                    # the order alternates (A B, B A, ...): whichever runs second in a pair finds
                    # the allocator and caches warmed by the first, which must not favour one side
                    if r % 2:
                        b = hand_loop(bench, built.model, params, cfg, args, hand_ckpt)
                        a = stitch_loop(bench, session, variant, cfg, args, Path(tmp) / f"s{v}-{r}")
                    else:
                        a = stitch_loop(bench, session, variant, cfg, args, Path(tmp) / f"s{v}-{r}")
                        b = hand_loop(bench, built.model, params, cfg, args, hand_ckpt)
                    if r:
                        rows["stitch"].append(a)
                        rows["hand"].append(b)
                    print(f"{variant} round {r}: stitch {a[0]:.3f}s hand {b[0]:.3f}s", file=sys.stderr)
                out["variants"][variant] = summary(rows)
    print(json.dumps(out, indent=2))
    return out


def summary(rows: dict[str, list[tuple[float, float, int]]]) -> dict[str, Any]:
    """Medians of images/s (train region and whole call) per side, and the ratios stitch/hand."""
    res: dict[str, Any] = {}
    for side, runs in rows.items():
        res[side] = {
            "train_images_per_s": statistics.median(n / t for t, _, n in runs),
            "total_images_per_s": statistics.median(n / t for _, t, n in runs),
            "train_seconds": [round(t, 4) for t, _, _ in runs],
            "total_seconds": [round(t, 4) for _, t, _ in runs],
        }
    # per-round ratios (each round's pair ran back to back), then their median
    for key, idx in (("train", 0), ("total", 1)):
        ratios = [h[idx] / s[idx] for s, h in zip(rows["stitch"], rows["hand"], strict=True)]
        res[f"ratio_{key}"] = round(statistics.median(ratios), 4)
        res[f"ratio_{key}_rounds"] = [round(x, 4) for x in ratios]
    res["ratio_train_of_medians"] = round(
        res["stitch"]["train_images_per_s"] / res["hand"]["train_images_per_s"], 4
    )
    assert all(math.isfinite(v) for v in (res["ratio_train"], res["ratio_total"]))
    return res


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - start:.1f}s", file=sys.stderr)

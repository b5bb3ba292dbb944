"""Data wait: the share of training-step time spent blocked on the data loader.

The loader is the engine's own (:func:`stitch.loaders.make_loaders`: batch size, ``drop_last``,
shuffle, persistent workers re-seeded every epoch, ``pin_memory`` on CUDA, the data's collate
function) over the experiment's training ``Dataset`` (``--cache`` sets ``data.cache``; with
``device`` the data's batch transform runs inside the step, so its work counts as step time);
each step is a plain step (batch to the device, ``task.loss``, a finite-loss check, backward,
optimiser and schedule steps, ``float(loss)``), with the engine's per-epoch seeding. For each
``num_workers`` in ``--workers`` it trains a fresh model for ``--epochs`` epochs and, for every
epoch after the first, measures:

- ``wait``: the time in ``iter(loader)`` and in every ``next()`` on it (``time.perf_counter``);
- ``total``: from the epoch's start to its last step, after ``torch.cuda.synchronize`` on CUDA.

``wait_share`` is ``sum(wait) / sum(total)`` over epochs 2.. (the issue's goal: below 5 %).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_setup import Bench, common_args, environment, load_bench, now

from stitch.config import TrainCfg
from stitch.devices import pick_device, to_device
from stitch.engine import lr_factor, make_optimizer
from stitch.loaders import make_loaders
from stitch.seeding import epoch_seed, seed_everything


def measure(
    bench: Bench, variant: str, cfg: TrainCfg, workers: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Per-epoch wait and total seconds of one training with ``workers`` loader processes."""
    device = args.dev
    built, params = bench.model(variant, args.seed)
    model = built.model.to(device)
    collate = getattr(bench.data, "collate_fn", None)
    transform = getattr(bench.data, "train_batch_transform", None)
    loader, _, gen = make_loaders(bench.data.train, bench.data.val, cfg.batch_size, workers, device, collate)
    steps = len(loader)
    optimizer = make_optimizer(params, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, cfg))
    epochs: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        es = epoch_seed(args.seed, epoch)
        seed_everything(es)
        gen.manual_seed(es)
        model.train()
        start = now(device)
        batches = iter(loader)
        wait = time.perf_counter() - start
        optimizer.zero_grad(set_to_none=True)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                wait += time.perf_counter() - t0
                break
            wait += time.perf_counter() - t0
            batch = to_device(batch, device)
            if transform is not None:  # data.cache: device (the run's batch transform)
                batch = transform(batch)
            loss, _parts = bench.task.loss(model, batch)
            if not torch.isfinite(loss):
                raise SystemExit(f"loss is not finite at epoch {epoch}")
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            float(loss.detach())
        total = now(device) - start
        epochs.append({"epoch": epoch, "wait_s": round(wait, 5), "total_s": round(total, 5)})
    after_first = epochs[1:] or epochs
    wait_sum = sum(e["wait_s"] for e in after_first)
    total_sum = sum(e["total_s"] for e in after_first)
    return {
        "num_workers": workers,
        "wait_share": round(wait_sum / max(total_sum, 1e-12), 4),
        "epochs_counted": [e["epoch"] for e in after_first],
        "per_epoch": epochs,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(parser)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="num_workers values")
    parser.add_argument("--variant", default="Baseline")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each measurement; the median share")
    args = parser.parse_args(argv)
    args.dev = pick_device(args.device)
    bench = load_bench(args)
    assert bench.exp.cfg.data is not None
    cfg = bench.exp.cfg.train.model_copy(update={"epochs": args.epochs})
    results = []
    for workers in args.workers:
        runs = [measure(bench, args.variant, cfg, workers, args) for _ in range(args.rounds)]
        runs.sort(key=lambda r: r["wait_share"])
        median = runs[len(runs) // 2]
        median["wait_share_rounds"] = [r["wait_share"] for r in runs]
        results.append(median)
        print(f"num_workers {workers}: wait share {median['wait_share']:.4f}", file=sys.stderr)
    out = {
        "benchmark": "data_wait",
        "experiment": Path(args.experiment).name,
        "data": args.data if args.data == "shapes" else bench.exp.cfg.data.dataset,
        "cache": bench.exp.cfg.data.cache,
        "variant": args.variant,
        "train_images": len(bench.data.train),
        "batch_size": cfg.batch_size,
        "epochs": args.epochs,
        "environment": environment(args.dev),
        "results": results,
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

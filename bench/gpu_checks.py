"""Checks of the CUDA-only paths of issue 14's speed features, for a session lent a GPU.

Not a benchmark and not a test (the suite never needs a GPU): one script that runs, on a tiny
generated-shapes U-Net, each speed feature on the device and compares it with the plain path:

- ``sync``: losses read every step vs every ``train.sync_every`` (automatic: 50 on CUDA): the
  histories must be equal; host synchronisations inside an epoch counted with
  ``torch.cuda.set_sync_debug_mode("warn")``;
- ``precision``: fp16 (gradient scaling) and bf16 train, with no "lr_scheduler.step() before
  optimizer.step()" warning; ``channels_last`` with bf16;
- ``diverged``: a NaN loss at micro-step 2 stops the run naming step 2 with ``sync_every: 3``;
- ``cache``: ``data.cache: device`` (augmentation on the GPU) against no cache: the largest
  difference of the training histories (the GPU's resize may round differently from the CPU's);
- ``compile``: ``train.compile`` with inductor (Triton): a trained history close to eager's.

Prints one JSON object; exits 1 when a check fails (each check's ``ok``). ``--device cpu`` runs
the same checks on the CPU (the sync count and compile are then skipped), which is how the script
itself is checked. Run from the repository root::

    python bench/gpu_checks.py > gpu_checks.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from stitch.build import stitch_variant
from stitch.config import parse_experiment
from stitch.engine import Callback, Diverged, train
from stitch.runs import experiment_data
from stitch.tasks import make_task


def experiment_text(root: Path, cache: str = "none") -> str:
    """A width-8 U-Net on 48 generated 64 x 64 shapes images, 2 epochs, batch 8."""
    return f"""\
name: gpu_checks
task: segmentation
baseline: {{model: unet, args: {{base_width: 8}}}}
data: {{dataset: shapes, root: {root}, num_images: 48, image_size: [64, 64], num_classes: 3, cache: {cache},
        augment: {{hflip: true, vflip: true, rotate90: true, scale: [0.8, 1.2], color_jitter: 0.2}}}}
train: {{epochs: 2, batch_size: 8, loss: ce+dice, deterministic: true}}
"""


class Steps(Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_step(self, epoch: int, step: int, loss: float, images: int) -> None:
        self.count += 1


def train_once(
    text: str, device: torch.device, out: Path, task_wrapper: Any = None, **train: Any
) -> dict[str, Any]:
    """Train the experiment once with ``train`` overrides; history, warnings, seconds."""
    exp, data = experiment_data(parse_experiment(text, "gpu_checks.yaml"))
    task = make_task(exp.cfg.task, data, exp.cfg.train.loss)
    if task_wrapper is not None:
        task = task_wrapper(task)
    cfg = exp.cfg.train.model_copy(update=train)
    steps = Steps()
    model = stitch_variant(exp, "Baseline", 0).model
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = train_fn(model, task, data, cfg, device, out, steps)
    seconds = time.perf_counter() - start
    return {
        "history": [
            {k: v for k, v in h.items() if k not in ("seconds", "train_images_per_s")} for h in state.history
        ],
        "scheduler_warnings": sum("lr_scheduler.step()" in str(w.message) for w in caught),
        "sync_warnings": sum("synchroniz" in str(w.message) for w in caught),
        "steps_seen": steps.count,
        "seconds": round(seconds, 3),
    }


def train_fn(
    model: Any, task: Any, data: Any, cfg: Any, device: torch.device, out: Path, steps: Steps
) -> Any:
    transform = getattr(data, "train_batch_transform", None)
    return train(
        model,
        task,
        data.train,
        data.val,
        cfg,
        0,
        device,
        out,
        "miou",
        callbacks=[steps],
        batch_transform=transform,
    )


def max_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """The largest absolute difference of the numbers two histories share."""
    worst = 0.0
    for x, y in zip(a, b):
        for key, value in x.items():
            if isinstance(value, (int, float)) and isinstance(y.get(key), (int, float)):
                worst = max(worst, abs(float(value) - float(y[key])))
    return worst


class NanAtSecondStep:
    """A task whose second training loss is NaN."""

    def __init__(self, task: Any) -> None:
        self.task, self.calls = task, 0

    def loss(self, model: Any, batch: Any) -> Any:
        self.calls += 1
        loss, parts = self.task.loss(model, batch)
        return (loss * float("nan") if self.calls == 2 else loss), parts

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        return self.task.evaluate(*args, **kwargs)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu to check the script")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_checks: no CUDA device here; use --device cpu to check the script itself", file=sys.stderr)
        raise SystemExit(2)
    cuda = device.type == "cuda"
    tmp = Path(tempfile.mkdtemp(prefix="gpu_checks_"))
    text = experiment_text(tmp / "data")
    checks: dict[str, Any] = {}

    every = train_once(text, device, tmp / "every", sync_every=1)
    auto = train_once(text, device, tmp / "auto")
    checks["sync"] = {
        "ok": every["history"] == auto["history"],
        "history_equal": every["history"] == auto["history"],
        "seconds_every_step": every["seconds"],
        "seconds_automatic": auto["seconds"],
    }
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
        quiet = train_once(text, device, tmp / "syncs", sync_every=1000, epochs=1)
        torch.cuda.set_sync_debug_mode(0)
        checks["sync"]["host_syncs_in_one_epoch_incl_eval_and_checkpoint"] = quiet["sync_warnings"]

    for name, update in {
        "fp16": {"precision": "fp16"},
        "bf16": {"precision": "bf16"},
        "bf16_channels_last": {"precision": "bf16", "channels_last": True},
    }.items():
        result = train_once(text, device, tmp / name, deterministic=False, **update)
        losses = [h["train_loss"] for h in result["history"]]
        checks[name] = {
            "ok": result["scheduler_warnings"] == 0 and all(v == v for v in losses),
            "train_loss": losses,
            "scheduler_warnings": result["scheduler_warnings"],
            "seconds": result["seconds"],
        }

    try:
        train_once(text, device, tmp / "nan", task_wrapper=NanAtSecondStep, sync_every=3)
        checks["diverged"] = {"ok": False, "message": "no Diverged raised"}
    except Diverged as exc:
        checks["diverged"] = {"ok": "step 2" in str(exc), "message": str(exc)}

    cached = train_once(experiment_text(tmp / "data", cache="device"), device, tmp / "cache")
    difference = max_difference(every["history"], cached["history"])
    checks["cache_device"] = {
        "ok": difference < (5e-2 if cuda else 0.0) or (not cuda and cached["history"] == every["history"]),
        "max_history_difference": difference,
        "seconds": cached["seconds"],
        "seconds_without_cache": every["seconds"],
    }

    if cuda:
        compiled = train_once(text, device, tmp / "compile", compile=True, deterministic=False)
        eager = train_once(text, device, tmp / "eager", deterministic=False)
        difference = max_difference(eager["history"], compiled["history"])
        checks["compile"] = {
            "ok": difference < 5e-2,
            "max_history_difference": difference,
            "seconds_compiled_incl_compile": compiled["seconds"],
            "seconds_eager": eager["seconds"],
        }

    out = {
        "benchmark": "gpu_checks",
        "device": str(device),
        "name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "checks": checks,
    }
    print(json.dumps(out, indent=2))
    if not all(c["ok"] for c in checks.values()):
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main()

"""The held-out test split of a finished run: evaluated once, after training, at the epoch the
validation split chose (``best.pt``) and at the last epoch.

Nothing during training looks at the test split, so no choice (the best epoch, early stopping,
a sweep's pruning) can depend on it; the tables pick one of the two evaluations with
``report.selection``. Segmentation also keeps each test image's confusion matrix (for the
bootstrap over images), unless the split is so large that they would not fit a database row
(:data:`MAX_PER_IMAGE_COUNTS`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from stitch.errors import StitchError
from stitch.safe_load import load_plain
from stitch.tasks.base import PER_IMAGE_KEY, Task

#: most confusion-matrix counts kept per evaluation (e.g. 2 classes x 2 x 100 000 images, or 21
#: classes x 21 x 2 000 images); beyond it the bootstrap over images is left out
MAX_PER_IMAGE_COUNTS = 1_000_000


class HeldOutError(StitchError):
    """The chosen epoch's weights cannot be read back for the test evaluation."""


def chosen_weights(best_file: Path, best_epoch: int, device: torch.device) -> dict[str, Any]:
    """The model state saved at the chosen epoch (``best.pt``), checked to be that epoch's."""
    fix = "run the command again with --force to retrain this run"
    if not best_file.is_file():
        raise HeldOutError(f"{best_file}: missing, so epoch {best_epoch} cannot be tested; {fix}")
    saved = load_plain(best_file, device, fix)
    if saved.get("epoch") != best_epoch:
        raise HeldOutError(
            f"{best_file}: holds epoch {saved.get('epoch')}, but validation chose epoch {best_epoch}; {fix}"
        )
    state: dict[str, Any] = saved["model"]
    return state


def named_for_test(metrics: dict[str, Any], images: int, epoch: int) -> dict[str, Any]:
    """A test evaluation's metrics with ``val_loss`` named ``loss`` (its parts ``val_loss_ce`` …
    named ``loss_ce`` …), its size and its epoch."""
    out = {
        (k[len("val_") :] if k == "val_loss" or k.startswith("val_loss_") else k): v
        for k, v in metrics.items()
    }
    out.update(images=images, epoch=epoch)
    return out


def evaluate_test(
    model: nn.Module,
    task: Task,
    test_set: Any,
    device: torch.device,
    ckpt_dir: Path,
    best_epoch: int | None,
    last_epoch: int,
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """``{"test_best_metrics", "test_last_metrics", "test_per_image"}`` of a finished run (the
    store's columns). ``model`` holds the last epoch's weights and holds them again on return;
    ``best.pt`` in ``ckpt_dir`` holds the chosen epoch's (read with ``weights_only=True``; a
    missing file or one of another epoch is an error, never replaced by the last weights). Each
    metrics dict gets ``images`` (the test split's size) and ``epoch``; the task's ``val_loss``
    is ``loss`` here. ``test_best_metrics`` is None when no epoch was chosen (``best_epoch``
    None: the validation metric was never defined)."""
    loader = DataLoader(test_set, batch_size=max(1, batch_size), shuffle=False, collate_fn=collate_fn)
    keep = (num_classes or 0) ** 2 * len(test_set) <= MAX_PER_IMAGE_COUNTS
    last = task.evaluate(model, loader, device, per_image=keep)
    per_image: dict[str, Any] = {}
    if PER_IMAGE_KEY in last:
        per_image["last"] = last.pop(PER_IMAGE_KEY)
    last = named_for_test(last, len(test_set), last_epoch)
    best: dict[str, Any] | None
    if best_epoch is None:  # validation never defined the primary metric: no epoch was chosen
        best = None
    elif best_epoch == last_epoch:
        best = dict(last)
        if "last" in per_image:
            per_image["best"] = per_image["last"]
    else:
        saved = chosen_weights(ckpt_dir / "best.pt", best_epoch, device)
        weights = copy.deepcopy(model.state_dict())
        try:
            model.load_state_dict(saved)
            best = task.evaluate(model, loader, device, per_image=keep)
        finally:
            model.load_state_dict(weights)
        if PER_IMAGE_KEY in best:
            per_image["best"] = best.pop(PER_IMAGE_KEY)
        best = named_for_test(best, len(test_set), best_epoch)
    return {
        "test_best_metrics": best,
        "test_last_metrics": last,
        "test_per_image": per_image or None,
    }

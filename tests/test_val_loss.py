"""The validation loss is the configured training loss (issue 15: loss curves compare like with
like): segmentation's ``ce``, ``dice`` and ``ce+dice`` with their parts, Mask R-CNN's summed loss
dict from a train-mode forward that leaves the model and the random generators as they were, and
histories stored before the parts existed still report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_report import make_run_dir
from torch import nn

from stitch.config import TrainCfg
from stitch.engine import train
from stitch.model_mode import eval_mode
from stitch.report import load_results
from stitch.report.plots import plot_curves
from stitch.store import ResultStore
from stitch.tasks.base import LossMeans, loss_part_key
from stitch.tasks.segmentation import SegmentationTask, soft_dice_loss


def tiny_segmenter() -> nn.Module:
    """Conv, BatchNorm and dropout: evaluation must see the eval-mode output."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout2d(0.5), nn.Conv2d(4, 3, 1)
    )


def seg_batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, 3, (n, 8, 8), generator=g)
    mask[:, 0, :3] = 255  # ignored pixels
    return {"image": torch.rand(n, 3, 8, 8, generator=g), "mask": mask}


@pytest.mark.parametrize("loss", ["ce", "dice", "ce+dice"])
def test_val_loss_is_the_configured_loss_on_fixed_batches(loss: str) -> None:
    model, task = tiny_segmenter(), SegmentationTask(3, loss)
    batches = [seg_batch(2, 0), seg_batch(1, 1)]  # batches of 2 and 1 images: weighted by images
    metrics = task.evaluate(model, batches, torch.device("cpu"))
    with eval_mode(model), torch.no_grad():
        expected = [task.loss(model, b) for b in batches]
        logits = [model(b["image"]) for b in batches]
    assert model.training  # the mode is restored
    assert metrics["val_loss"] == (2 * float(expected[0][0]) + float(expected[1][0])) / 3
    ce = [F.cross_entropy(x, b["mask"], ignore_index=255) for x, b in zip(logits, batches)]
    dice = [soft_dice_loss(x, b["mask"], 255) for x, b in zip(logits, batches)]
    by_part = {
        "ce": (2 * float(ce[0]) + float(ce[1])) / 3,
        "dice": (2 * float(dice[0]) + float(dice[1])) / 3,
    }
    named = loss.split("+")
    assert metrics["val_loss"] == pytest.approx(sum(by_part[p] for p in named), rel=1e-6)
    if len(named) == 1:  # one part: no part keys (they would repeat the total), as in training
        assert not [k for k in metrics if k.startswith("val_loss_")]
    else:
        assert {k for k in metrics if k.startswith("val_loss_")} == {"val_loss_ce", "val_loss_dice"}
        for p in named:
            assert metrics[f"val_loss_{p}"] == pytest.approx(by_part[p], rel=1e-6)
        # the parts' weights are 1 (train.loss is their plain sum)
        assert metrics["val_loss"] == pytest.approx(
            metrics["val_loss_ce"] + metrics["val_loss_dice"], rel=1e-6
        )


def test_ce_val_loss_is_unchanged_cross_entropy() -> None:
    """``train.loss: ce`` (the default): the same number the evaluation always reported."""
    model, task = tiny_segmenter(), SegmentationTask(3, "ce")
    batch = seg_batch(2, 3)
    with eval_mode(model), torch.no_grad():
        old = float(F.cross_entropy(model(batch["image"]).float(), batch["mask"], ignore_index=255))
    assert task.evaluate(model, [batch], torch.device("cpu"))["val_loss"] == old * 2 / 2


class Items(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.batches = [seg_batch(1, 10 + i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batches[i].items()}


def test_history_holds_train_and_val_loss_parts_that_add_up(tmp_path: Path) -> None:
    cfg = TrainCfg.model_validate(
        {"epochs": 1, "batch_size": 2, "loss": "ce+dice", "scheduler": {"name": "none"}}
    )
    state = train(
        tiny_segmenter(), SegmentationTask(3, "ce+dice"), Items(4), Items(3), cfg, 0, torch.device("cpu"),
        tmp_path, "miou",
    )  # fmt: skip
    (record,) = state.history
    for split in ("train", "val"):
        parts = [record[loss_part_key(split, p)] for p in ("ce", "dice")]
        assert all(math.isfinite(v) for v in parts)
        assert record[f"{split}_loss"] == pytest.approx(sum(parts), rel=1e-6)


def test_loss_means_name_parts_like_the_training_history() -> None:
    means = LossMeans()
    means.add(torch.tensor(3.0), {"loss_mask": 1.0, "loss_classifier": 2.0}, images=2)
    means.add(1.0, {"loss_mask": 0.5, "loss_classifier": 0.5}, images=2)
    assert means.means("val") == {"val_loss": 2.0, "val_loss_mask": 0.75, "val_loss_classifier": 1.25}
    assert loss_part_key("train", "ce") == "train_loss_ce"
    assert LossMeans().means() == {"val_loss": 0.0}  # an empty split divides by nothing


def coco_pair(size: int = 48) -> tuple[Any, list[dict[str, Any]]]:
    """A two-image COCO ground truth (two objects, then none) and its torchvision targets."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    for image_id, objects in ((1, [(4, 6, 14, 12), (24, 20, 16, 18)]), (2, [])):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": size, "width": size})
        masks = []
        for x, y, w, h in objects:
            m = np.zeros((size, size), np.uint8)
            m[y : y + h, x : x + w] = 1
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode()
            anns.append(
                {
                    "id": len(anns) + 1, "image_id": image_id, "category_id": 1, "segmentation": rle,
                    "area": float(w * h), "bbox": [x, y, w, h], "iscrowd": 0,
                }
            )  # fmt: skip
            masks.append(torch.from_numpy(m))
        n = len(objects)
        targets.append(
            {
                "boxes": torch.tensor(
                    [[x, y, x + w, y + h] for x, y, w, h in objects], dtype=torch.float32
                ).reshape(n, 4),
                "labels": torch.ones(n, dtype=torch.int64),
                "masks": torch.stack(masks) if masks else torch.zeros(0, size, size, dtype=torch.uint8),
                "image_id": image_id,
            }
        )
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "box"}]}
    gt.createIndex()
    return gt, targets


def test_instance_val_loss_is_the_summed_loss_dict_and_leaves_no_trace() -> None:
    from stitch.baselines.maskrcnn import build_maskrcnn
    from stitch.model_mode import train_mode
    from stitch.tasks.instance import InstanceTask

    gt, targets = coco_pair()
    torch.manual_seed(0)
    model = build_maskrcnn("resnet18", num_classes=2, min_size=48, max_size=48, norm="bn")
    images = [torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    batch = {"images": images, "targets": targets}
    task = InstanceTask(gt, {1: 1}, backend="pycocotools")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm buffers included
    torch.manual_seed(1)
    rng = torch.get_rng_state()
    metrics = task.evaluate(model, [batch], torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad(), train_mode(model, keep_batchnorm_stats=True):
        torch.manual_seed(1)  # the same proposal sampling as the evaluation's forked generator
        total, parts = task.loss(model, batch)
    assert metrics["val_loss"] == float(total)
    assert {k for k in metrics if k.startswith("val_loss_")} == {f"val_{p}" for p in parts}
    for p, v in parts.items():
        assert metrics[f"val_{p}"] == float(v)
    assert metrics["val_loss"] == pytest.approx(sum(float(v) for v in parts.values()), rel=1e-5)
    assert "segm_ap" in metrics


def test_histories_stored_without_loss_parts_still_report(tmp_path: Path) -> None:
    """Rows from before the parts (``val_loss`` cross-entropy only) beside a row with parts: the
    results load and the curves draw."""
    run_dir, ids = make_run_dir(tmp_path, seeds=(0, 1), epochs=2)
    with ResultStore(run_dir / "runs.sqlite") as store:
        rid = ids[("Baseline", 0)]
        row = store.get(rid)
        assert row is not None
        history = [
            {**h, "val_loss_ce": h["val_loss"] / 2, "val_loss_dice": h["val_loss"] / 2} for h in row.history
        ]
        store.update(rid, history=history)
    res = load_results(run_dir, costs=False, latency=False)
    assert any("val_loss_ce" not in h for v in res.variants for r in v.rows for h in r.history)
    drawn = plot_curves(res, tmp_path / "curves")
    assert drawn and all(p.is_file() for p in drawn)

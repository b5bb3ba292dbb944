"""The instance task: COCO evaluation of torchvision-format detections, and the training loss."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch

from stitch.tasks.instance import InstanceTask, coco_metrics, detections_to_coco

CATEGORY_IDS = (3, 7, 42)  # non-contiguous on purpose
LABEL_TO_CATEGORY = dict(enumerate(CATEGORY_IDS, 1))


def _coco_gt(n_images: int = 4, size: int = 48, seed: int = 0):
    """A small COCO ground truth (RLE masks; one crowd region; one image without objects) and,
    per image, the torchvision-style target of its non-crowd objects."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    rng = np.random.default_rng(seed)
    images, anns, targets = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i * 10, "file_name": f"{i}.png", "height": size, "width": size})
        boxes, labels, masks = [], [], []
        for k in range(0 if i == n_images else 3):
            m = np.zeros((size, size), np.uint8)
            x0, y0 = rng.integers(0, size - 16, 2)
            w, h = rng.integers(6, 16, 2)
            m[y0 : y0 + h, x0 : x0 + w] = 1
            m[y0, x0] = 0  # not exactly a box
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode()
            label = int(rng.integers(1, len(CATEGORY_IDS) + 1))
            crowd = int(i == 1 and k == 2)
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i * 10,
                    "category_id": LABEL_TO_CATEGORY[label],
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "bbox": bbox,
                    "iscrowd": crowd,
                }
            )
            if not crowd:
                boxes.append([bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]])
                labels.append(label)
                masks.append(m)
        targets.append(
            {
                "image_id": i * 10,
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "masks": torch.from_numpy(np.stack(masks))
                if masks
                else torch.zeros(0, size, size, dtype=torch.uint8),
            }
        )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, targets


def _as_outputs(targets, scores=None):
    """Ground-truth targets written as Mask R-CNN eval outputs (masks N x 1 x H x W probabilities)."""
    outs = []
    for t in targets:
        n = len(t["labels"])
        outs.append(
            {
                "boxes": t["boxes"],
                "labels": t["labels"],
                "scores": torch.ones(n) if scores is None else scores[:n],
                "masks": t["masks"][:, None].float(),
            }
        )
    return outs


def _results(outputs, targets):
    res = {"bbox": [], "segm": []}
    for out, t in zip(outputs, targets):
        conv = detections_to_coco(out, t["image_id"], LABEL_TO_CATEGORY)
        res["bbox"] += conv["bbox"]
        res["segm"] += conv["segm"]
    return res


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_ground_truth_scored_as_predictions_gives_ap_1(backend):
    if backend == "faster-coco-eval":
        pytest.importorskip("faster_coco_eval")
    gt, targets = _coco_gt()
    metrics = coco_metrics(
        gt, _results(_as_outputs(targets), targets), [t["image_id"] for t in targets], backend
    )
    for iou in ("bbox", "segm"):
        for name in ("ap", "ap50", "ap75", "ar"):
            assert metrics[f"{iou}_{name}"] == pytest.approx(1.0), (iou, name, metrics)
    assert math.isnan(metrics["segm_apl"])  # no large objects in 48 px images: undefined, not 0


def test_category_ids_survive_the_round_trip():
    gt, targets = _coco_gt()
    res = _results(_as_outputs(targets), targets)
    want = sorted((a["image_id"], a["category_id"]) for a in gt.dataset["annotations"] if not a["iscrowd"])
    assert sorted((r["image_id"], r["category_id"]) for r in res["segm"]) == want
    assert {r["category_id"] for r in res["bbox"]} <= set(CATEGORY_IDS)


def test_a_wrong_label_costs_ap():
    gt, targets = _coco_gt()
    outputs = _as_outputs(targets)
    outputs[0]["labels"] = outputs[0]["labels"] % len(CATEGORY_IDS) + 1  # every object of image 1 mislabelled
    metrics = coco_metrics(gt, _results(outputs, targets), [t["image_id"] for t in targets], "pycocotools")
    assert metrics["segm_ap"] < 0.95 and metrics["bbox_ap"] < 0.95


def test_faster_coco_eval_gives_the_same_numbers_as_pycocotools():
    pytest.importorskip("faster_coco_eval")
    gt, targets = _coco_gt(n_images=6, seed=3)
    g = torch.Generator().manual_seed(0)
    outputs = []
    for out in _as_outputs(targets):  # jittered boxes, eroded/shifted masks, random scores, a false positive
        n = len(out["labels"])
        out["boxes"] = out["boxes"] + torch.randn(n, 4, generator=g) * 2
        out["masks"] = torch.roll(out["masks"], shifts=1, dims=3)
        out["scores"] = torch.rand(n, generator=g)
        outputs.append(out)
    ids = [t["image_id"] for t in targets]
    a = coco_metrics(gt, _results(outputs, targets), ids, "pycocotools")
    b = coco_metrics(gt, _results(outputs, targets), ids, "faster-coco-eval")
    assert a.keys() == b.keys()
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], abs=1e-6), (
            k,
            a[k],
            b[k],
        )
    assert 0 < a["segm_ap"] < 1


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_no_detections_scores_zero_where_there_is_ground_truth_and_nan_elsewhere(backend):
    if backend == "faster-coco-eval":
        pytest.importorskip("faster_coco_eval")
    gt, targets = _coco_gt()
    ids = [t["image_id"] for t in targets]
    none = coco_metrics(gt, {"bbox": [], "segm": []}, ids, backend)
    assert none["segm_ap"] == 0.0 and none["bbox_ar"] == 0.0 and none["segm_aps"] == 0.0
    # the same undefined metrics as when there are detections (no large objects in 48-px images)
    some = coco_metrics(gt, _results(_as_outputs(targets), targets), ids, backend)
    assert (
        [k for k, v in none.items() if math.isnan(v)] == [k for k, v in some.items() if math.isnan(v)] != []
    )


def test_instance_task_trains_and_evaluates_a_tiny_mask_rcnn(tmp_path):
    from stitch.baselines.maskrcnn import build_maskrcnn
    from stitch.config import TrainCfg
    from stitch.engine import Callback, train

    gt, targets = _coco_gt(n_images=4, size=64)

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(targets)

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            image = torch.rand(3, 64, 64, generator=g) * 0.2
            for m in targets[i]["masks"]:
                image[:, m.bool()] = 0.9
            return {"image": image, "target": targets[i], "index": i}

    def collate(items):
        return {
            "images": [x["image"] for x in items],
            "targets": [x["target"] for x in items],
            "index": [x["index"] for x in items],
        }

    torch.manual_seed(0)
    model = build_maskrcnn("resnet18", num_classes=len(CATEGORY_IDS) + 1, min_size=64, max_size=64)
    task = InstanceTask(gt, LABEL_TO_CATEGORY, backend="pycocotools")
    cfg = TrainCfg(epochs=2, batch_size=2, optimizer={"name": "sgd", "lr": 0.01}, scheduler={"name": "none"})
    steps = []

    class LossParts(Callback):
        def on_losses(self, epoch, step, parts):
            steps.append(parts)

    state = train(
        model,
        task,
        Items(),
        Items(),
        cfg,
        0,
        torch.device("cpu"),
        tmp_path,
        "segm_ap",
        collate_fn=collate,
        callbacks=[LossParts()],
    )
    assert state.epoch == 2 and len(state.history) == 2
    record = state.history[-1]
    for part in ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"):
        assert math.isfinite(record[f"train_{part}"])
    assert len(steps) == 4 and set(steps[0]) >= {"loss_mask", "loss_classifier"}
    assert record["train_loss"] == pytest.approx(
        sum(v for k, v in record.items() if k.startswith("train_loss_")), rel=1e-5
    )
    for key in ("segm_ap", "bbox_ap", "segm_ap50", "bbox_ar"):
        assert key in record and (math.isnan(record[key]) or 0.0 <= record[key] <= 1.0)
    assert "detections_per_image" in record

"""The instance-segmentation task (torchvision Mask R-CNN): training loss and COCO evaluation.

Loss: torchvision's detection models return their losses in train mode; the task sums them and
hands the parts (``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``,
``loss_mask``) to the engine, which logs each per step and per epoch. The validation loss is the
same sum on the val images (``val_loss``, parts ``val_loss_classifier`` ...): a second,
train-mode forward with the targets and without gradients (:meth:`InstanceTask.validation_loss`),
which leaves no trace (BatchNorm statistics, torch's random generators and the modes restored).

Evaluation: the official COCO protocol through pycocotools' ``COCOeval`` (``bbox`` and ``segm``:
AP, AP50, AP75, APs/m/l and AR@100), on the val split's ground truth in its original pixel
coordinates and original category ids. ``faster-coco-eval`` is used instead when it is installed
(a C++ drop-in with the same protocol; a test checks both give the same numbers), unless
``STITCH_COCO_EVAL=pycocotools``. Detections are converted the way torchvision's detection
references do: boxes to ``[x, y, w, h]``, masks thresholded at 0.5 and RLE-encoded, contiguous
labels mapped back to category ids, and bbox and segm results loaded separately (pycocotools'
``loadRes`` would otherwise give segm detections their box area).

A metric COCO leaves undefined (``-1``: no ground truth of that size range, e.g. APl on small
tiles) is reported as NaN, not as a number. With no detections at all every metric that has
ground truth is 0.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from stitch.model_mode import eval_mode, train_mode
from stitch.tasks.base import LossMeans

#: COCOeval ``stats`` index of each reported metric (the first 9 entries of its summary).
COCO_STATS = {"ap": 0, "ap50": 1, "ap75": 2, "aps": 3, "apm": 4, "apl": 5, "ar": 8}
#: the COCO area range each metric is computed over (COCOeval's ``areaRng``, in pixels^2)
METRIC_AREA = {
    "ap": "all",
    "ap50": "all",
    "ap75": "all",
    "ar": "all",
    "aps": "small",
    "apm": "medium",
    "apl": "large",
}
AREA_RANGES = {
    "all": (0.0, 1e10),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e10),
}
IOU_TYPES = ("bbox", "segm")


def coco_backend() -> str:
    """``faster-coco-eval`` when installed (and not switched off), else ``pycocotools``."""
    if os.environ.get("STITCH_COCO_EVAL", "").lower() == "pycocotools":
        return "pycocotools"
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return "pycocotools"
    return "faster-coco-eval"


def detections_to_coco(
    output: dict[str, torch.Tensor],
    image_id: int,
    label_to_category: dict[int, int],
    mask_threshold: float = 0.5,
) -> dict[str, list[dict[str, Any]]]:
    """One image's torchvision detections as COCO result entries, ``{"bbox": [...], "segm": [...]}``."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    out: dict[str, list[dict[str, Any]]] = {"bbox": [], "segm": []}
    if boxes.numel() == 0:
        return out
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
    masks = None
    if "masks" in output:
        m = output["masks"].detach().cpu()
        m = m[:, 0] if m.dim() == 4 else m
        masks = (m.float() > mask_threshold).numpy().astype(np.uint8)
    for k, (box, score, label) in enumerate(zip(xywh, scores, labels)):
        cat = label_to_category[int(label)]
        out["bbox"].append(
            {
                "image_id": int(image_id),
                "category_id": cat,
                "bbox": [round(v, 3) for v in box],
                "score": float(score),
            }
        )
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(masks[k]))
            rle["counts"] = rle["counts"].decode("ascii")
            out["segm"].append(
                {"image_id": int(image_id), "category_id": cat, "segmentation": rle, "score": float(score)}
            )
    return out


_FASTER_GT: dict[int, tuple[Any, Any]] = {}


def _faster_gt(coco_gt: Any) -> Any:
    """faster-coco-eval's own index of ``coco_gt``, built once per ground truth (not per evaluation)."""
    from faster_coco_eval import COCO as FasterCOCO

    key = id(coco_gt)
    if key not in _FASTER_GT or _FASTER_GT[key][0] is not coco_gt:
        _FASTER_GT[key] = (coco_gt, FasterCOCO(copy.deepcopy(coco_gt.dataset)))
    return _FASTER_GT[key][1]


def _evaluate_one(
    coco_gt: Any, results: list[dict[str, Any]], iou_type: str, image_ids: Sequence[int], backend: str
) -> list[float]:
    """COCOeval ``stats`` for one IoU type (quiet)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster-coco-eval":
            from faster_coco_eval import COCOeval_faster

            gt = _faster_gt(coco_gt)
            dt = gt.loadRes(copy.deepcopy(results))
            ev = COCOeval_faster(gt, dt, iou_type, print_function=lambda *a, **k: None)
        else:
            from pycocotools.cocoeval import COCOeval

            dt = coco_gt.loadRes(copy.deepcopy(results))
            ev = COCOeval(coco_gt, dt, iou_type)
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats]


def coco_metrics(
    coco_gt: Any,
    results: dict[str, list[dict[str, Any]]],
    image_ids: Sequence[int],
    backend: str | None = None,
) -> dict[str, float]:
    """``bbox_ap``, ``bbox_ap50`` … ``segm_ar`` (fractions in [0, 1]; NaN where COCO has no value)."""
    backend = backend or coco_backend()
    ids = sorted({int(i) for i in image_ids})
    out: dict[str, float] = {}
    for iou_type in IOU_TYPES:
        dets = results.get(iou_type, [])
        if dets:
            stats = _evaluate_one(coco_gt, dets, iou_type, ids, backend)
            values = {name: stats[idx] for name, idx in COCO_STATS.items()}
        else:  # COCOeval cannot load an empty result list: 0 where there is ground truth, else undefined
            values = {
                name: 0.0 if _has_ground_truth(coco_gt, ids, METRIC_AREA[name]) else -1.0
                for name in COCO_STATS
            }
        for name, value in values.items():
            out[f"{iou_type}_{name}"] = float("nan") if value < 0 else value
    return out


def _has_ground_truth(coco_gt: Any, image_ids: Sequence[int], area: str) -> bool:
    """Whether COCOeval would count any ground-truth object of the area range (non-crowd, its
    ``area`` inside the range, as COCOeval decides what to ignore)."""
    lo, hi = AREA_RANGES[area]
    return any(
        not a.get("iscrowd", 0) and lo <= float(a.get("area", 0.0)) <= hi
        for i in image_ids
        for a in coco_gt.imgToAnns.get(i, [])
    )


@dataclass
class InstanceTask:
    """Loss and COCO evaluation of a torchvision Mask R-CNN.

    ``coco_gt`` is the val split's pycocotools ``COCO`` (original coordinates and category ids);
    ``label_to_category`` maps the model's contiguous labels back to those ids.
    """

    coco_gt: Any
    label_to_category: dict[int, int]
    mask_threshold: float = 0.5
    backend: str | None = None
    last_results: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum of the model's training losses (the model is in train mode) and each part (detached
        tensors: the loop reads them on the host only at its sync points)."""
        losses = model(batch["images"], batch["targets"])
        total = sum(losses.values(), torch.zeros((), device=next(iter(losses.values())).device))
        return total, {k: v.detach() for k, v in losses.items()}

    def validation_loss(
        self, model: nn.Module, images: list[torch.Tensor], targets: list[dict[str, Any]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss (:meth:`loss`) of one validation batch, without gradients: a
        train-mode forward with the targets (the only mode in which torchvision's detectors return
        losses), whose BatchNorm statistics are restored after, and whose random draws (proposal
        sampling, a multi-scale ``min_size``) come from a fork of torch's generators, so training
        goes on exactly as without it."""
        device = images[0].device
        on_device = [
            {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
            for t in targets
        ]
        forked = [device] if device.type == "cuda" else []
        with (
            torch.no_grad(),
            torch.random.fork_rng(devices=forked),
            train_mode(model, keep_batchnorm_stats=True),
        ):
            return self.loss(model, {"images": images, "targets": on_device})

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[dict[str, Any]],
        device: torch.device,
        per_image: bool = False,
    ) -> dict[str, Any]:
        """COCO bbox and segm metrics of ``model`` on ``batches`` (the val or test loader), in eval
        mode (the model's mode is restored after), and ``val_loss`` with its parts
        (:meth:`validation_loss`, image-weighted means over the batches). ``per_image`` is
        ignored: COCO AP is a ranking over all images' detections and has no per-image value to
        resample."""
        results: dict[str, list[dict[str, Any]]] = {t: [] for t in IOU_TYPES}
        image_ids: list[int] = []
        detections = 0
        losses = LossMeans()
        with eval_mode(model):
            for batch in batches:
                images = [im.to(device, non_blocking=True) for im in batch["images"]]
                outputs = model(images)
                losses.add(*self.validation_loss(model, images, batch["targets"]), images=len(images))
                for target, output in zip(batch["targets"], outputs):
                    image_id = int(target["image_id"])
                    image_ids.append(image_id)
                    converted = detections_to_coco(
                        output, image_id, self.label_to_category, self.mask_threshold
                    )
                    detections += len(converted["bbox"])
                    for t in IOU_TYPES:
                        results[t] += converted[t]
        self.last_results = results
        metrics: dict[str, Any] = coco_metrics(self.coco_gt, results, image_ids, self.backend)
        metrics["detections_per_image"] = detections / max(len(image_ids), 1)
        metrics.update(losses.means("val"))
        return metrics


def make_instance_task(data: Any, loss: str = "ce") -> InstanceTask:
    """The task of an instance data bundle (:data:`stitch.registry.TASKS` entry); ``loss`` is
    unused: the detector computes its own losses."""
    return InstanceTask(data.coco_gt, dict(data.label_to_category))

"""COCO evaluation: pycocotools against faster-coco-eval on the same detections.

Ground truth: the instance ``shapes`` generator of :mod:`stitch.data.shapes` drawn in memory
(``render_objects`` with the instance set's 2-5 objects per image, each object's visible part as
its mask, :func:`stitch.data.coco_format.mask_fields` for RLE, area and box), ``--images`` images
(default 300) of ``--size`` pixels (default 256, so small, medium and large objects occur),
``--classes - 1`` categories, indexed with :func:`stitch.data.coco_format.coco_index`.

Detections, deterministic from ``--seed`` (``numpy.random.default_rng``), made as a torchvision
Mask R-CNN returns them (``boxes`` xyxy, ``scores``, ``labels``, soft ``masks`` N x 1 x H x W):
each ground-truth object is found with probability 0.9, its mask shifted by up to 3 pixels and
dilated or eroded by one pixel, its box the mask's box with up to 2 pixels of noise on each side,
its label wrong with probability 0.1, its score uniform in [0.3, 1]; plus 0-3 false positives per
image (random ellipses, score uniform in [0.05, 0.6]). They are converted once with
:func:`stitch.tasks.instance.detections_to_coco`, as ``InstanceTask.evaluate`` converts a model's
outputs (``conversion_seconds``).

Timed (``time.perf_counter``): :func:`stitch.tasks.instance.coco_metrics` with ``backend``
``pycocotools`` and ``faster-coco-eval``, the call ``InstanceTask.evaluate`` makes after the
conversion (bbox then segm: results loaded, ``evaluate``, ``accumulate``, ``summarize``).
The first call of each backend is reported apart (``first_call_seconds``: faster-coco-eval
then also builds its ground-truth index, which stitch caches for the later evaluations of a
run); then ``--rounds`` rounds (default 5), pycocotools then faster-coco-eval in each, and the
medians.

Agreement: the 12 ``COCOeval.stats`` of each IoU type computed by each library's own evaluator
on the same results (``max_abs_difference``), and the largest difference of the metrics
``coco_metrics`` returns (NaN, COCO's undefined, printed as null). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_setup import environment

from stitch.data.coco_format import coco_index, mask_fields
from stitch.data.shapes import INSTANCE_COUNT, SHAPE_NAMES, render_objects, visible_parts
from stitch.tasks.instance import IOU_TYPES, coco_metrics, detections_to_coco

BACKENDS = ("pycocotools", "faster-coco-eval")


def ground_truth(n_images: int, size: int, num_classes: int, seed: int) -> tuple[dict[str, Any], list]:
    """A COCO instances dict of ``n_images`` shapes images and each image's visible object masks."""
    cats = [
        {"id": k, "name": n, "supercategory": "shape"}
        for k, n in enumerate(SHAPE_NAMES[: num_classes - 1], 1)
    ]
    doc: dict[str, Any] = {"images": [], "annotations": [], "categories": cats}
    objects = []
    for i in range(n_images):
        _, drawn = render_objects(i, seed, (size, size), num_classes, INSTANCE_COUNT)
        visible = visible_parts(drawn)
        objects.append(visible)
        doc["images"].append({"id": i + 1, "file_name": f"{i:05d}.png", "height": size, "width": size})
        for label, mask in visible:
            doc["annotations"].append(
                {"id": len(doc["annotations"]) + 1, "image_id": i + 1, "category_id": label, "iscrowd": 0}
                | mask_fields(mask)
            )
    return doc, objects


def jittered(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``mask`` shifted by up to 3 pixels and grown or shrunk by one pixel (a 4-neighbourhood)."""
    out = np.roll(mask, tuple(int(v) for v in rng.integers(-3, 4, 2)), axis=(0, 1))
    grown = out.copy()
    for axis in (0, 1):
        for step in (-1, 1):
            shifted = np.roll(out, step, axis=axis)
            grown = grown | shifted if rng.random() < 0.5 else grown & shifted
    return grown if grown.any() else out


def ellipse(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random filled ellipse (a false positive)."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0, size, 2)
    ry, rx = rng.uniform(0.03, 0.2, 2) * size
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def detections(objects: list, size: int, num_classes: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """One torchvision-style output per image (module docstring)."""
    rng = np.random.default_rng(seed)
    outputs = []
    for visible in objects:
        masks, labels, scores = [], [], []
        for label, mask in visible:
            if rng.random() < 0.9:
                masks.append(jittered(mask, rng))
                wrong = rng.random() < 0.1 and num_classes > 2
                labels.append(
                    int(rng.choice([c for c in range(1, num_classes) if c != label])) if wrong else label
                )
                scores.append(rng.uniform(0.3, 1.0))
        for _ in range(int(rng.integers(0, 4))):
            masks.append(ellipse(size, rng))
            labels.append(int(rng.integers(1, num_classes)))
            scores.append(rng.uniform(0.05, 0.6))
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
            boxes.append(np.clip(box + rng.uniform(-2, 2, 4), 0, size))
        soft = [np.where(m, rng.uniform(0.6, 1.0), rng.uniform(0.0, 0.3)) for m in masks]
        outputs.append(
            {
                "boxes": torch.tensor(np.array(boxes).reshape(-1, 4), dtype=torch.float32),
                "scores": torch.tensor(scores, dtype=torch.float32),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "masks": torch.tensor(np.array(soft).reshape(-1, 1, size, size), dtype=torch.float32),
            }
        )
    return outputs


def library_stats(
    doc: dict[str, Any], coco_gt: Any, results: list, iou_type: str, backend: str
) -> list[float]:
    """The 12 ``COCOeval.stats`` of one IoU type from ``backend``'s own evaluator (quiet)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster-coco-eval":
            from faster_coco_eval import COCO, COCOeval_faster

            gt = COCO(copy.deepcopy(doc))
            ev = COCOeval_faster(
                gt, gt.loadRes(copy.deepcopy(results)), iou_type, print_function=lambda *a, **k: None
            )
        else:
            from pycocotools.cocoeval import COCOeval

            ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats]


def max_difference(a: dict[str, float], b: dict[str, float]) -> float:
    """The largest |a - b| over the keys (NaN on both sides counts as equal; on one side as inf)."""
    worst = 0.0
    for key in a:
        x, y = a[key], b[key]
        if math.isnan(x) and math.isnan(y):
            continue
        worst = max(worst, abs(x - y) if not (math.isnan(x) or math.isnan(y)) else math.inf)
    return worst


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--classes", type=int, default=4, help="shape categories + 1 (background)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    doc, objects = ground_truth(args.images, args.size, args.classes, args.seed)
    coco_gt = coco_index(doc)
    outputs = detections(objects, args.size, args.classes, args.seed)
    start = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in IOU_TYPES}
    for i, output in enumerate(outputs):
        converted = detections_to_coco(output, i + 1, {c: c for c in range(1, args.classes)})
        for t in IOU_TYPES:
            results[t] += converted[t]
    conversion = time.perf_counter() - start
    ids = [im["id"] for im in doc["images"]]

    def timed(backend: str) -> tuple[float, dict[str, float]]:
        t0 = time.perf_counter()
        metrics = coco_metrics(coco_gt, results, ids, backend)
        return time.perf_counter() - t0, metrics

    first = {b: timed(b) for b in BACKENDS}
    seconds: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for r in range(args.rounds):
        for b in BACKENDS:
            seconds[b].append(timed(b)[0])
        print(f"round {r + 1}: " + ", ".join(f"{b} {seconds[b][-1]:.3f}s" for b in BACKENDS), file=sys.stderr)
    stats = {t: {b: library_stats(doc, coco_gt, results[t], t, b) for b in BACKENDS} for t in IOU_TYPES}
    median = {b: statistics.median(s) for b, s in seconds.items()}
    out: dict[str, Any] = {
        "benchmark": "coco_eval",
        "images": args.images,
        "image_size": args.size,
        "categories": args.classes - 1,
        "ground_truth_objects": len(doc["annotations"]),
        "detections": len(results["bbox"]),
        "rounds": args.rounds,
        "environment": environment(torch.device("cpu")),
        "conversion_seconds": round(conversion, 4),
        "first_call_seconds": {b: round(t, 4) for b, (t, _) in first.items()},
        "seconds": {b: [round(t, 4) for t in s] for b, s in seconds.items()},
        "median_seconds": {b: round(t, 4) for b, t in median.items()},
        "speedup": round(median["pycocotools"] / median["faster-coco-eval"], 3),
        "stats": {t: {b: [round(v, 6) for v in s] for b, s in per.items()} for t, per in stats.items()},
        "max_abs_difference": {
            t: max(abs(x - y) for x, y in zip(per["pycocotools"], per["faster-coco-eval"], strict=True))
            for t, per in stats.items()
        },
        "metrics_max_abs_difference": max_difference(first["pycocotools"][1], first["faster-coco-eval"][1]),
        "metrics": {k: None if math.isnan(v) else v for k, v in first["pycocotools"][1].items()},
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

"""Non-learned references a table can show (``report.reference``): the floor a network must beat.

``otsu`` (binary segmentation): one global threshold chosen by Otsu's method on the histogram of
every training pixel (multi-channel images: the mean over channels), with the polarity (is the
foreground above or below it?) that gives the larger foreground IoU on the training masks; the
thresholded images of the reported split are scored with the metrics the network is scored with
(:mod:`stitch.tasks.metrics`). Images go through the evaluation transform (resize, normalisation)
on both splits, so the threshold lives in the units the network sees. Otsu's method is written
out here (a histogram and one ``argmax``): scikit-image, which has it, is not a dependency.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stitch.data.common import SegDataset
from stitch.errors import StitchError
from stitch.tasks.metrics import ConfusionMatrix

if TYPE_CHECKING:
    from stitch.data import DataBundle

#: the references ``report.reference`` may name, and their row labels
REFERENCE_LABELS = {"otsu": "Otsu threshold (no training)"}


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the bin edge that maximises the between-class variance of
    the histogram (pixels ``> threshold`` are one class); the lower edge for constant values."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)  # pixels at or below each inner edge
    w1 = v.size - w0
    s0 = np.cumsum(counts * centers)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (float((counts * centers).sum()) - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


@dataclass(frozen=True)
class OtsuReference:
    """The fitted threshold, its polarity and the metrics on the scored split."""

    threshold: float
    foreground_above: bool
    split: str
    metrics: dict[str, float]


def _gray(item: dict[str, Any]) -> torch.Tensor:
    return item["image"].float().mean(0)


def _gray_masks(dataset: Any) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """``(grey image, mask)`` of every sample of ``dataset``, decoded as they are iterated."""
    return ((_gray(item), item["mask"]) for item in (dataset[i] for i in range(len(dataset))))


def _score(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], threshold: float, above: bool, ignore: int
) -> ConfusionMatrix:
    cm = ConfusionMatrix(2, ignore)
    for g, mask in pairs:
        cm.update(((g > threshold) == above).long(), mask)
    return cm


def _fg_iou(cm: ConfusionMatrix) -> float:
    value = cm.compute()["fg_iou"]
    assert isinstance(value, float)
    return value


def otsu_reference(data: DataBundle, split: str = "val") -> OtsuReference:
    """Fit Otsu's threshold on ``data``'s training images (evaluation transform, no augmentation)
    and score it on ``split``; binary segmentation only (a one-line error otherwise)."""
    if data.task != "segmentation" or data.num_classes != 2:
        raise StitchError(
            f"report.reference: otsu needs binary segmentation (2 classes); this data has "
            f"{data.num_classes} classes for the {data.task} task (remove report.reference)"
        )
    scored = getattr(data, split, None)
    if scored is None:
        raise StitchError(f"report.reference: otsu: the data has no {split!r} split")
    # the training images decoded once: the threshold and both polarities read them
    train = list(_gray_masks(SegDataset(data.train.source, data.val.transform, "train")))
    threshold = otsu_threshold(torch.cat([g.ravel() for g, _ in train]).numpy())
    fg = {above: _fg_iou(_score(train, threshold, above, data.ignore_index)) for above in (True, False)}
    above = fg[True] >= fg[False]
    computed = _score(_gray_masks(scored), threshold, above, data.ignore_index).compute()
    metrics = {k: float(v) for k, v in computed.items() if isinstance(v, float)}
    return OtsuReference(threshold, above, split, metrics)

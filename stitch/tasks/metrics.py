"""Segmentation metrics from a confusion matrix accumulated on the device.

One ``num_classes x num_classes`` matrix (rows: target, columns: prediction) holds everything;
per-class TP/FP/FN/TN, IoU, Dice/F1, precision and recall and pixel accuracy are read off it, so
no metric is averaged over batches of different sizes. Pixels whose target is ``ignore_index`` are
dropped. A class absent from both target and prediction has undefined metrics (NaN) and is left
out of the means rather than counted as 0 or 1; a class present in one of them gets 0 where its
ratio has no denominator (never predicted: precision 0; predicted but absent: recall 0).
"""

from __future__ import annotations

import torch


class ConfusionMatrix:
    """Accumulates ``target x prediction`` counts (int64, on the predictions' device)."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` are integer label maps of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
            )
        keep = target != self.ignore_index
        t, p = target[keep].long(), pred[keep].long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_classes):
            raise ValueError(
                f"target labels outside 0..{self.num_classes - 1} (and not ignore_index {self.ignore_index})"
            )
        idx = t * self.num_classes + p
        counts = torch.bincount(idx, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).to(self.matrix.device)

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self) -> dict[str, float | list[float]]:
        return metrics_from_confusion(self.matrix)


def _ratio(num: torch.Tensor, den: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """``num / den``; 0 where ``den`` is 0 but the class is present (in target or prediction),
    NaN where it is absent from both (undefined, left out of the means)."""
    out = num.double() / den.double().clamp(min=1)
    defined = (den > 0) if present is None else present
    return torch.where(defined, out, torch.full_like(out, float("nan")))


def confusion_scores(matrix: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric of :func:`metrics_from_confusion` as tensors, for one ``K x K`` matrix or a
    batch ``... x K x K`` (the bootstrap over images scores thousands of pooled matrices at once).

    Scalars have the batch shape; ``*_per_class``, ``tp``/``fp``/``fn``/``tn`` end in ``K``."""
    m = matrix.to(torch.int64)
    tp = m.diagonal(dim1=-2, dim2=-1)
    fp = m.sum(-2) - tp
    fn = m.sum(-1) - tp
    total = m.sum((-2, -1))
    tn = total.unsqueeze(-1) - tp - fp - fn
    present = (tp + fp + fn) > 0
    iou = _ratio(tp, tp + fp + fn, present)
    dice = _ratio(2 * tp, 2 * tp + fp + fn, present)
    precision = _ratio(tp, tp + fp, present)  # never predicted but present: precision 0
    recall = _ratio(tp, tp + fn, present)  # predicted but absent from the target: recall 0
    # binary foreground view: class 0 is background
    fg_tp = m[..., 1:, 1:].sum((-2, -1))
    fg_fp = m[..., 0, 1:].sum(-1)
    fg_fn = m[..., 1:, 0].sum(-1)
    return {
        "miou": torch.nanmean(iou, -1),
        "mdice": torch.nanmean(dice, -1),
        "mprecision": torch.nanmean(precision, -1),
        "mrecall": torch.nanmean(recall, -1),
        "pixel_acc": _ratio(tp.sum(-1), total),
        "fg_iou": _ratio(fg_tp, fg_tp + fg_fp + fg_fn),
        "fg_dice": _ratio(2 * fg_tp, 2 * fg_tp + fg_fp + fg_fn),
        "iou_per_class": iou,
        "dice_per_class": dice,
        "precision_per_class": precision,
        "recall_per_class": recall,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def metrics_from_confusion(matrix: torch.Tensor) -> dict[str, float | list[float]]:
    """Every metric stitch reports, from one confusion matrix.

    Means (``miou``, ``mdice``, ``mprecision``, ``mrecall``) are over classes where the metric is
    defined. ``fg_iou``/``fg_dice`` treat every class but 0 as foreground (binary view), the usual
    number for one-object-type sets such as nuclei or lesions.
    """
    scores = confusion_scores(matrix.detach().to("cpu", torch.int64))
    return {k: (v.tolist() if v.dim() else float(v)) for k, v in scores.items()}

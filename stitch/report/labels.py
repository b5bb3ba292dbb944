"""The words and symbols of the report: metric labels, which metrics are fractions shown in %, and
the typographic marks (dash, dagger, check mark, delta) the tables use."""

from __future__ import annotations

from stitch.config import TASK_METRICS

PERCENT_METRICS = frozenset(m for ms in TASK_METRICS.values() for m in ms)
METRIC_LABELS = {
    "miou": "mIoU", "mdice": "mDice", "pixel_acc": "Pixel acc.", "mprecision": "mPrecision",
    "mrecall": "mRecall", "fg_iou": "FG IoU", "fg_dice": "FG Dice",
    "segm_ap": "Mask AP", "segm_ap50": "Mask AP50", "segm_ap75": "Mask AP75", "segm_aps": "Mask APs",
    "segm_apm": "Mask APm", "segm_apl": "Mask APl", "segm_ar": "Mask AR",
    "bbox_ap": "Box AP", "bbox_ap50": "Box AP50", "bbox_ap75": "Box AP75", "bbox_aps": "Box APs",
    "bbox_apm": "Box APm", "bbox_apl": "Box APl", "bbox_ar": "Box AR",
    "train_loss": "Training loss", "val_loss": "Validation loss",
}  # fmt: skip
DASH = "\u2013"
DAGGER = "\u2020"
CHECK = "\u2713"
DELTA = "\u0394"


def metric_label(metric: str) -> str:
    """The name a table or plot shows for ``metric`` (``miou`` -> ``mIoU``); unknown names as given."""
    return METRIC_LABELS.get(metric, metric)

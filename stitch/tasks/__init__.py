"""Per-task code: how a batch becomes a loss and how a model is evaluated (no training loop)."""
from __future__ import annotations

from typing import Any


def make_task(task: str, data: Any, loss: str = "ce") -> Any:
    """The task object the engine trains with, for ``task`` on the prepared ``data`` bundle.

    ``segmentation``: :class:`~stitch.tasks.segmentation.SegmentationTask` (``train.loss`` picks
    the loss); ``instance``: :class:`~stitch.tasks.instance.InstanceTask` (the detector's own
    losses; evaluated against ``data.coco_gt``).
    """
    if task == "instance":
        from stitch.tasks.instance import InstanceTask

        return InstanceTask(data.coco_gt, dict(data.label_to_category))
    from stitch.tasks.segmentation import SegmentationTask

    return SegmentationTask(data.num_classes, loss, data.ignore_index)

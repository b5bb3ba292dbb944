"""Per-task code: how a batch becomes a loss and how a model is evaluated (no training loop).

Tasks are found by name in :data:`stitch.registry.TASKS`: ``segmentation``
(:class:`~stitch.tasks.segmentation.SegmentationTask`, ``train.loss`` picks the loss) and
``instance`` (:class:`~stitch.tasks.instance.InstanceTask`, the detector's own losses, evaluated
against ``data.coco_gt``).
"""

from __future__ import annotations

from typing import Any

from stitch.registry import TASKS
from stitch.tasks.base import Task

__all__ = ["Task", "make_task"]


def make_task(task: str, data: Any, loss: str = "ce") -> Task:
    """The task object the engine trains with, for ``task`` on the prepared ``data`` bundle."""
    factory = TASKS.lookup(task)
    made: Task = factory(data, loss)
    return made

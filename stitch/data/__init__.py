"""Datasets for the experiments: ``build_data(cfg) -> DataBundle``.

One module per dataset (``folder``, ``voc``, ``coco``, ``nuclei``, ``shapes``, ``brain``), each
turning its config block (:mod:`stitch.config`) into a :class:`~stitch.data.common.Prepared`;
the joint image/mask transforms are in :mod:`stitch.data.transforms`. Generated and extracted
datasets (``shapes``, ``nuclei``, ``brain``) are written once, atomically, under the cache
directory and reused.

Every missing or malformed input raises :class:`DataError` (a :class:`~stitch.errors.StitchError`)
with one line naming the file and the fix.

``build_data(cfg, task="instance")`` gives the instance-segmentation datasets of torchvision's
Mask R-CNN (``coco``, ``voc``, ``nuclei``, ``shapes``; see :mod:`stitch.data.instance` for the
items, the collate function, ``coco_gt`` and the policy for bad annotations). Each of those
modules also has a ``build_instance(cfg, cache_dir) -> InstancePrepared``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stitch.data.common import DataError, Prepared, SegDataset, resolve_cache_dir
from stitch.registry import DATASETS, TASKS

if TYPE_CHECKING:
    from stitch.config import DataCfg

__all__ = [
    "DATASETS",
    "INSTANCE_DATASETS",
    "TASKS",
    "DataBundle",
    "DataError",
    "build_data",
    "resolve_cache_dir",
]

# DATASETS (``data.dataset`` -> its module here, imported on first use) is stitch.registry's, re-exported.
#: the datasets with per-object masks (a ``build_instance`` function): the instance task.
INSTANCE_DATASETS = ("coco", "voc", "nuclei", "shapes")
# TASKS (the task names) is stitch.registry's too, re-exported.


@dataclass
class DataBundle:
    """The train, val and (where the experiment has one) test datasets of an experiment and what the
    model and reports need to know.

    ``val`` chooses the epoch (the best or the last); ``test`` is held out, evaluated once a run has
    finished, and is what the tables report. ``test`` is ``None`` when the dataset config gives no
    test split (the tables then report val and say that it also chose the epoch).

    Segmentation: items of ``train``/``val`` are ``{"image": float32 CxHxW (normalised), "mask":
    int64 HxW, "index": int}``, all of ``image_size``; ``val`` is deterministic, ``train`` augments
    with torch's global RNG. ``dataset.name(i)`` gives a sample's file stem.

    Instance (``task == "instance"``): items are ``{"image": float32 3xHxW in [0, 1] (not
    normalised), "target": {"boxes": float32 Nx4 xyxy pixels, "labels": int64 N in 1..K, "masks":
    uint8 NxHxW, "image_id": int}, "index": int}``; val images at their native size (so
    predictions are in ``coco_gt``'s coordinates), train images augmented jointly. Batch them with
    ``collate_fn`` (lists, not stacked). ``coco_gt`` is a pycocotools ``COCO`` of the val split
    (original ids, crowd regions included, skipped annotations removed); ``label_to_category``
    maps labels 1..K back to category ids; ``num_classes`` = K + 1; mean/std are 0/1 (Mask R-CNN
    normalises inside its own transform); ``info["skipped"]`` counts the annotations left out.
    """

    train: Any  # torch.utils.data.Dataset
    val: Any
    num_classes: int
    in_channels: int
    class_names: list[str]
    ignore_index: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict = field(default_factory=dict)  # dataset, root (the folder read), split (how), split counts
    task: str = "segmentation"
    collate_fn: Callable | None = None  # instance task: stitch.data.instance.collate_instances
    coco_gt: Any = None  # instance task: pycocotools COCO of the val split
    # instance task: label 1..K -> category id
    label_to_category: dict[int, int] = field(default_factory=dict)
    test: Any = None  # the held-out test split (items as in val), or None
    coco_gt_test: Any = None  # instance task: pycocotools COCO of the test split
    #: ``data.cache: device``: applied by the engine to every training batch once it is on the device
    #: (:meth:`stitch.data.device_augment.DeviceTrainSet.augment_batch`); ``None`` otherwise
    train_batch_transform: Callable[[dict], dict] | None = None

    def split_view(self, split: str) -> DataBundle:
        """This bundle with ``split`` (``val`` or ``test``) in the ``val`` place (and its ``coco_gt``),
        so a task built from it evaluates that split."""
        if split == "val":
            return self
        if split != "test" or self.test is None:
            raise ValueError(f"no {split!r} split in this data bundle")
        return replace(self, val=self.test, coco_gt=self.coco_gt_test, test=None, coco_gt_test=None)

    def describe(self) -> str:
        """One line for logs: dataset, sizes, classes, where it lives (instance task: objects and
        skipped annotations)."""
        i = self.info
        text = (
            f"{i.get('dataset', '?')}: {len(self.train)} train / {len(self.val)} val / "
            f"{len(self.test) if self.test is not None else 'no'} test, "
            f"{self.num_classes} classes ({', '.join(self.class_names)}), {self.in_channels} channel(s), "
            f"split {i.get('split', '?')}, at {i.get('root', '?')}"
        )
        if self.task == "instance":
            obj = i.get("objects", {})
            parts = [
                f"{obj.get(s, {}).get('objects', 0)} {s} objects"
                for s in ("train", "val", "test")
                if s in obj
            ]
            crowd = sum(v.get("crowd", 0) for v in obj.values())
            if crowd:
                parts.append(f"{crowd} crowd regions (not trained on, kept for evaluation)")
            zero = sum(v.get("zero_size_bbox", 0) for v in obj.values())
            if zero:
                parts.append(
                    f"{zero} JSON boxes of zero width or height (training boxes come from the masks)"
                )
            skipped = skipped_text(i)
            parts.append(f"skipped: {skipped}" if skipped else "nothing skipped")
            text += "; instance task: " + ", ".join(parts)
        elif skipped_text(i):  # the semantic coco task's short polygons
            text += f"; skipped: {skipped_text(i)}"
        return text


def skipped_text(info: dict) -> str:
    """``"3 short polygons, 1 no polygon"``: the annotations ``info["skipped"]`` counts over the
    splits, or an empty string when none were skipped."""
    total: dict[str, int] = {}
    for counts in info.get("skipped", {}).values():
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in total.items() if v)


def build_data(
    cfg: DataCfg, cache_dir: str | os.PathLike | None = None, task: str = "segmentation"
) -> DataBundle:
    """Build the datasets of a ``data:`` config block (a :data:`stitch.config.DataCfg`); the
    dataset's module comes from :data:`stitch.registry.DATASETS`.

    ``cache_dir`` is where prepared datasets (nuclei tiles, shapes files, brain slices) live; when
    not given: ``cfg.root`` if set, else ``$STITCH_DATA``, else ``~/.cache/stitch``. The
    ``folder``/``voc``/``coco`` datasets are read in place from ``cfg.root``. ``task`` is the
    experiment's: ``segmentation`` (class masks) or ``instance`` (objects for Mask R-CNN; only the
    :data:`INSTANCE_DATASETS`). ``cfg.cache`` (``memory``, ``device``) decodes the samples once
    (:mod:`stitch.data.cache`, :mod:`stitch.data.device_augment`).
    """
    data = _build_uncached(cfg, cache_dir, task)
    cache = getattr(cfg, "cache", "none")
    if cache == "memory":
        from stitch.data.cache import memory_cached

        return memory_cached(data)
    if cache == "device":
        from stitch.data.device_augment import device_cached

        return device_cached(data)
    return data


def _build_uncached(cfg: DataCfg, cache_dir: str | os.PathLike | None, task: str) -> DataBundle:
    from stitch.data.transforms import build_transforms, normalization

    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if cfg.dataset not in DATASETS:
        raise DataError(f"unknown dataset {cfg.dataset!r}; expected one of {', '.join(DATASETS)}")
    if task == "instance":
        if cfg.dataset not in INSTANCE_DATASETS:
            raise DataError(
                f"the {cfg.dataset} dataset has no object instances, so it cannot serve the instance task; "
                f"use one of {', '.join(INSTANCE_DATASETS)}, or task: segmentation"
            )
        return _build_instance(cfg, cache_dir)
    prep: Prepared = DATASETS[cfg.dataset].build(
        cfg, Path(cache_dir).expanduser() if cache_dir is not None else None
    )
    k, ii = prep.num_classes, cfg.ignore_index
    if 0 <= ii < k:
        raise DataError(
            f"data.ignore_index {ii} is a class index of the {cfg.dataset} dataset (classes 0..{k - 1}); use "
            "255 or -100"
        )
    if len(prep.class_names) != k:  # pragma: no cover - a dataset module's bug
        raise RuntimeError(f"{cfg.dataset}: {len(prep.class_names)} class names for {k} classes")
    mean, std = normalization(cfg.normalize, prep.in_channels, cfg.dataset)
    return DataBundle(
        train=SegDataset(prep.train, build_transforms(cfg, prep.in_channels, mean, std, train=True), "train"),
        val=SegDataset(prep.val, build_transforms(cfg, prep.in_channels, mean, std, train=False), "val"),
        test=(
            SegDataset(prep.test, build_transforms(cfg, prep.in_channels, mean, std, train=False), "test")
            if prep.test is not None
            else None
        ),
        num_classes=k,
        in_channels=prep.in_channels,
        class_names=list(prep.class_names),
        ignore_index=ii,
        mean=tuple(mean),
        std=tuple(std),
        info=dict(prep.info),
    )


def _build_instance(cfg: DataCfg, cache_dir: str | os.PathLike | None) -> DataBundle:
    from stitch.data.instance import InstanceDataset, InstancePrepared, collate_instances, instance_transforms

    prep: InstancePrepared = DATASETS[cfg.dataset].build_instance(
        cfg, Path(cache_dir).expanduser() if cache_dir is not None else None
    )
    return DataBundle(
        train=InstanceDataset(prep.train, instance_transforms(cfg, train=True), "train"),
        val=InstanceDataset(prep.val, instance_transforms(cfg, train=False), "val"),
        test=(
            InstanceDataset(prep.test, instance_transforms(cfg, train=False), "test")
            if prep.test is not None
            else None
        ),
        coco_gt_test=prep.coco_gt_test,
        num_classes=len(prep.class_names),
        in_channels=3,
        class_names=list(prep.class_names),
        ignore_index=cfg.ignore_index,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        info=dict(prep.info, task="instance"),
        task="instance",
        collate_fn=collate_instances,
        coco_gt=prep.coco_gt,
        label_to_category=dict(prep.label_to_category),
    )

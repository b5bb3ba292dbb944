"""Datasets for the experiments: ``build_data(cfg) -> DataBundle``.

One module per dataset (``folder``, ``voc``, ``coco``, ``nuclei``, ``shapes``, ``brain``), each
turning its config block (:mod:`stitch.config`) into a :class:`~stitch.data.common.Prepared`;
the joint image/mask transforms are in :mod:`stitch.data.transforms`. Generated and extracted
datasets (``shapes``, ``nuclei``, ``brain``) are written once, atomically, under the cache
directory and reused.

Every missing or malformed input raises :class:`DataError` (a :class:`~stitch.errors.StitchError`)
with one line naming the file and the fix.

Semantic segmentation only for now. For the instance task the nuclei tiles already carry COCO
instance JSON files (``annotations/instances_{train,val}.json`` beside the tiles), so an instance
source can be a COCO reader over the same folder.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from stitch.data.common import DataError, Prepared, SegDataset, resolve_cache_dir

__all__ = ["DataBundle", "DataError", "build_data", "resolve_cache_dir", "DATASETS"]

#: ``data.dataset`` -> module of :mod:`stitch.data` with a ``build(cfg, cache_dir) -> Prepared``.
DATASETS = {name: f"stitch.data.{name}" for name in ("folder", "voc", "coco", "nuclei", "shapes", "brain")}


@dataclass
class DataBundle:
    """The train and val datasets of an experiment and what the model and reports need to know.

    Items of ``train``/``val``: ``{"image": float32 CxHxW (normalised), "mask": int64 HxW,
    "index": int}``, all of ``image_size``; ``val`` is deterministic, ``train`` augments with
    torch's global RNG. ``dataset.name(i)`` gives a sample's file stem.
    """

    train: Any  # torch.utils.data.Dataset
    val: Any
    num_classes: int
    in_channels: int
    class_names: list[str]
    ignore_index: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict = field(default_factory=dict)  # dataset, root (the folder read), split (how), train/val counts

    def describe(self) -> str:
        """One line for logs: dataset, sizes, classes, where it lives."""
        i = self.info
        return (
            f"{i.get('dataset', '?')}: {len(self.train)} train / {len(self.val)} val, {self.num_classes} classes "
            f"({', '.join(self.class_names)}), {self.in_channels} channel(s), split {i.get('split', '?')}, at {i.get('root', '?')}"
        )


def build_data(cfg: Any, cache_dir: Optional[str | os.PathLike] = None) -> DataBundle:
    """Build the datasets of a ``data:`` config block (a :data:`stitch.config.DataCfg`).

    ``cache_dir`` is where prepared datasets (nuclei tiles, shapes files, brain slices) live; when
    not given: ``cfg.root`` if set, else ``$STITCH_DATA``, else ``~/.cache/stitch``. The
    ``folder``/``voc``/``coco`` datasets are read in place from ``cfg.root``.
    """
    from stitch.data.transforms import build_transforms, normalization

    if cfg.dataset not in DATASETS:
        raise DataError(f"unknown dataset {cfg.dataset!r}; expected one of {', '.join(DATASETS)}")
    module = importlib.import_module(DATASETS[cfg.dataset])
    prep: Prepared = module.build(cfg, Path(cache_dir).expanduser() if cache_dir is not None else None)
    k, ii = prep.num_classes, cfg.ignore_index
    if 0 <= ii < k:
        raise DataError(f"data.ignore_index {ii} is a class index of the {cfg.dataset} dataset (classes 0..{k - 1}); use 255 or -100")
    if len(prep.class_names) != k:  # pragma: no cover - a dataset module's bug
        raise RuntimeError(f"{cfg.dataset}: {len(prep.class_names)} class names for {k} classes")
    mean, std = normalization(cfg.normalize, prep.in_channels, cfg.dataset)
    return DataBundle(
        train=SegDataset(prep.train, build_transforms(cfg, prep.in_channels, mean, std, train=True), "train"),
        val=SegDataset(prep.val, build_transforms(cfg, prep.in_channels, mean, std, train=False), "val"),
        num_classes=k,
        in_channels=prep.in_channels,
        class_names=list(prep.class_names),
        ignore_index=ii,
        mean=tuple(mean),
        std=tuple(std),
        info=dict(prep.info),
    )

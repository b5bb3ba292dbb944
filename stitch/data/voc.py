"""``voc``: Pascal VOC 2012 segmentation.

``root`` is the ``VOC2012`` folder (or ``VOCdevkit/`` above it, or the folder holding
``VOCdevkit/``): ``JPEGImages/<id>.jpg``, ``<masks>/<id>.png`` (palette PNGs read as class
indices; 255 object borders become ``ignore_index``) and
``ImageSets/Segmentation/<train_split>.txt`` / ``<val_split>.txt``. 21 classes (background + 20).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from stitch.data.common import DataError, Prepared, read_list, require_nonempty
from stitch.data.folder import prepare_pairs

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]


def find_voc_root(root: Path) -> Path:
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    if not root.is_dir():
        raise DataError("VOC folder not found; set data.root to VOCdevkit/VOC2012", root)
    raise DataError("no JPEGImages/ here (nor in VOC2012/ or VOCdevkit/VOC2012/); set data.root to the VOC2012 folder", root)


def build(cfg: Any, cache_dir: Path | None = None) -> Prepared:
    root = find_voc_root(Path(cfg.root).expanduser())
    images, masks = root / "JPEGImages", root / cfg.masks
    if not masks.is_dir():
        raise DataError(f"no {cfg.masks}/ folder beside JPEGImages/; check data.masks (SegmentationClass)", masks)
    sets = root / "ImageSets" / "Segmentation"
    splits = {}
    pairs = {}
    for split, name in (("train", cfg.train_split), ("val", cfg.val_split)):
        lst = sets / f"{name}.txt"
        ids = read_list(lst)
        require_nonempty(split, len(ids), lst, "the list names no image ids")
        for i in ids:
            img, msk = images / f"{i}.jpg", masks / f"{i}.png"
            if not img.is_file():
                raise DataError(f"listed in {lst.name} but the image is missing; restore it or remove the id from the list", img)
            if not msk.is_file():
                raise DataError(f"listed in {lst.name} but the mask is missing; restore it or remove the id from the list", msk)
            pairs[i] = (img, msk)
        splits[split] = ids
    shared = set(splits["train"]) & set(splits["val"])
    if shared:
        raise DataError(f"{sorted(shared)[0]!r} is in both the {cfg.train_split} and {cfg.val_split} lists ({len(shared)} shared); a sample in both splits leaks", sets / f"{cfg.val_split}.txt")
    return prepare_pairs(
        pairs, splits["train"], splits["val"],
        channels=3, num_classes=len(VOC_CLASSES), ignore_index=cfg.ignore_index, class_names=list(VOC_CLASSES),
        raw_ignore=255, fix="VOC masks hold 0..20 and 255 (borders); is this a palette PNG of SegmentationClass?",
        info={"dataset": "voc", "root": str(root), "split": f"ImageSets/Segmentation/{cfg.train_split}.txt / {cfg.val_split}.txt"},
    )

"""``voc``: Pascal VOC 2012 segmentation.

``root`` is the ``VOC2012`` folder (or ``VOCdevkit/`` above it, or the folder holding
``VOCdevkit/``): ``JPEGImages/<id>.jpg``, ``<masks>/<id>.png`` (palette PNGs read as class
indices; 255 object borders become ``ignore_index``) and
``ImageSets/Segmentation/<train_split>.txt`` / ``<val_split>.txt``. 21 classes (background + 20).

Instance task (:func:`build_instance`): ``<objects>/<id>.png`` (``SegmentationObject``: palette
PNGs of instance indices 1..N, 0 background, 255 void border) with ``<masks>/<id>.png`` for the
classes. Each instance's class is the majority class of its pixels in the class mask (0 and 255
not counted; an instance without any class pixel is skipped and counted as ``no_class``). The
COCO dicts (RLE masks, bbox from the mask, area, iscrowd 0, categories 1..20 with the VOC names,
image ids 1.. in list order, train then val then test) are built in memory and read by
:mod:`stitch.data.instance`; the void border is background there.

Test split (both tasks; default none). VOC 2012's official test set has no public masks, so a
test split is one you hold out yourself: ``test_split`` names another
``ImageSets/Segmentation/<test_split>.txt`` (a list you wrote), or ``test_fraction`` holds out
``round(n * test_fraction)`` of the ``n`` ids of the train list (at least one, and one left to
train), drawn with the fixed seed :data:`TEST_SEED`, so every experiment over the same list holds
out the same images; they leave the train split. No id may be in two of the lists (an error
naming it); an empty list is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stitch.data.coco_format import mask_fields
from stitch.data.common import DataError, Prepared, hold_out, read_list, read_mask, require_nonempty
from stitch.data.folder import check_disjoint, prepare_pairs
from stitch.data.instance import InstancePrepared, from_coco_dicts

if TYPE_CHECKING:
    from stitch.config import VOCData

TEST_SEED = 0  # the test_fraction draw: fixed, so experiments over one list share the test images

VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def find_voc_root(root: Path) -> Path:
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    if not root.is_dir():
        raise DataError("VOC folder not found; set data.root to VOCdevkit/VOC2012", root)
    raise DataError(
        "no JPEGImages/ here (nor in VOC2012/ or VOCdevkit/VOC2012/); set data.root to the VOC2012 folder",
        root,
    )


def split_ids(cfg: VOCData, root: Path, folders: dict[str, Path]) -> dict[str, list[str]]:
    """``split -> ids`` of the list files (train, val, and test when configured; see the module
    docstring); every id needs ``JPEGImages/<id>.jpg`` and a ``<id>.png`` in each of ``folders``
    (what -> folder); no id in two splits."""
    images = root / "JPEGImages"
    for what, folder in folders.items():
        if not folder.is_dir():
            raise DataError(f"no {folder.name}/ folder beside JPEGImages/; check data.{what}", folder)
    sets = root / "ImageSets" / "Segmentation"
    splits = {}
    lists = [("train", cfg.train_split), ("val", cfg.val_split)]
    if cfg.test_split:
        lists.append(("test", cfg.test_split))
    for split, name in lists:
        lst = sets / f"{name}.txt"
        ids = read_list(lst)
        require_nonempty(split, len(ids), lst, "the list names no image ids")
        for i in ids:
            img = images / f"{i}.jpg"
            if not img.is_file():
                raise DataError(
                    f"listed in {lst.name} but the image is missing; restore it or remove the id from the "
                    "list",
                    img,
                )
            for folder in folders.values():
                if not (folder / f"{i}.png").is_file():
                    raise DataError(
                        f"listed in {lst.name} but the mask is missing; restore it or remove the id from the "
                        "list",
                        folder / f"{i}.png",
                    )
        splits[split] = ids
    shared = set(splits["train"]) & set(splits["val"])
    if shared:
        raise DataError(
            f"{sorted(shared)[0]!r} is in both the {cfg.train_split} and {cfg.val_split} lists "
            f"({len(shared)} shared); a sample in both splits leaks",
            sets / f"{cfg.val_split}.txt",
        )
    if cfg.test_split:
        check_disjoint(
            splits,
            {s: f"the {name} list" for s, name in lists},
            {s: sets / f"{name}.txt" for s, name in lists},
        )
    elif cfg.test_fraction:
        lst = sets / f"{cfg.train_split}.txt"
        splits["train"], splits["test"] = hold_out(
            splits["train"], cfg.test_fraction, TEST_SEED, "data.test_fraction", lst
        )
    return splits


def split_text(cfg: VOCData) -> str:
    """How the splits were made, for the data line of the log."""
    text = f"ImageSets/Segmentation/{cfg.train_split}.txt / {cfg.val_split}.txt"
    if cfg.test_split:
        return f"{text} / test {cfg.test_split}.txt"
    if cfg.test_fraction:
        return f"{text}, test: {cfg.test_fraction} of the {cfg.train_split} ids (seed {TEST_SEED})"
    return text


def build(cfg: VOCData, cache_dir: Path | None = None) -> Prepared:
    root = find_voc_root(Path(cfg.root).expanduser())
    images, masks = root / "JPEGImages", root / cfg.masks
    splits = split_ids(cfg, root, {"masks": masks})
    pairs = {i: (images / f"{i}.jpg", masks / f"{i}.png") for ids in splits.values() for i in ids}
    return prepare_pairs(
        pairs,
        splits["train"],
        splits["val"],
        test=splits.get("test"),
        channels=3,
        num_classes=len(VOC_CLASSES),
        ignore_index=cfg.ignore_index,
        class_names=list(VOC_CLASSES),
        raw_ignore=255,
        fix="VOC masks hold 0..20 and 255 (borders); is this a palette PNG of SegmentationClass?",
        info={"dataset": "voc", "root": str(root), "split": split_text(cfg)},
    )


def instances_of(obj: np.ndarray, cls: np.ndarray) -> tuple[list[tuple[int, np.ndarray]], int]:
    """``([(class 1..20, bool mask)], instances without a class)`` of one image."""
    out, no_class = [], 0
    for v in np.unique(obj):
        if v == 0 or v == 255:
            continue
        m = obj == v
        c = cls[m]
        c = c[(c > 0) & (c < len(VOC_CLASSES))]
        if c.size == 0:
            no_class += 1
            continue
        out.append((int(np.bincount(c).argmax()), m))
    return out, no_class


def build_instance(cfg: VOCData, cache_dir: Path | None = None) -> InstancePrepared:
    """The instance task (module docstring): COCO dicts built in memory from the PNGs."""
    root = find_voc_root(Path(cfg.root).expanduser())
    images, masks, objects = root / "JPEGImages", root / cfg.masks, root / cfg.objects
    splits = split_ids(cfg, root, {"objects": objects, "masks": masks})
    cats = [{"id": k, "name": n, "supercategory": "voc"} for k, n in enumerate(VOC_CLASSES) if k]
    dicts, no_class = {}, {}
    image_id = 0
    for split, ids in splits.items():
        imgs: list[dict[str, Any]] = []
        anns: list[dict[str, Any]] = []
        skipped = 0
        for i in ids:
            obj, cls = read_mask(objects / f"{i}.png"), read_mask(masks / f"{i}.png")
            if obj.shape != cls.shape:
                raise DataError(
                    f"object mask is {obj.shape[1]}x{obj.shape[0]} but {cfg.masks}/{i}.png is "
                    f"{cls.shape[1]}x{cls.shape[0]} (WxH); they must match",
                    objects / f"{i}.png",
                )
            image_id += 1
            h, w = obj.shape
            imgs.append({"id": image_id, "file_name": f"{i}.jpg", "height": int(h), "width": int(w)})
            found, n = instances_of(obj, cls)
            skipped += n
            for label, m in found:
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": image_id,
                        "category_id": label,
                        "iscrowd": 0,
                        **mask_fields(m),
                    }
                )
        dicts[split] = {"images": imgs, "annotations": anns, "categories": cats}
        no_class[split] = {"no_class": skipped}
    return from_coco_dicts(
        {s: (dicts[s], objects, images) for s in splits},
        {"dataset": "voc", "root": str(root), "split": split_text(cfg)},
        extra_skips=no_class,
    )

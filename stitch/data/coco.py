"""``coco`` (semantic): class masks rendered from a COCO instances JSON with pycocotools.

Category ids map to 1..K in increasing id order (0 is background; the train file's categories,
which the val file must share). Per image, non-crowd objects are drawn largest first, so a small
object lying on a larger one stays visible; crowd regions (``iscrowd: 1``) are then set to
``ignore_index``. Images without annotations are all background. Image files are checked to exist
at build time; masks are rendered as samples load.

``coco`` (instance task, :func:`build_instance`): the same files read by
:mod:`stitch.data.instance` (objects with polygon or RLE masks, crowd regions kept only for the
evaluation, bad annotations found at build time). With ``root`` at a COCO 2017 download
(``annotations/instances_train2017.json``, ``train2017/``, ``val2017/``) the defaults fit.

Test split (both tasks; default none): ``test_annotations`` with ``test_images`` (a file and its
image folder, both required: the folder is not guessed, since a held-out file may list images of
either download folder), or ``test_fraction``: ``round(n * test_fraction)`` of the train file's
``n`` images (at least one, and one left to train), drawn with the fixed seed
:data:`TEST_SEED` from the images sorted by id, so every experiment over the same file holds out
the same images; they leave the train split. COCO's own test-dev set has no public annotations.
No image file (its folder joined with its ``file_name``) may be in the test split and in train or
val; the train and val files are taken as given, as before.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stitch.data.coco_format import (
    check_bbox,
    check_images_exist,
    check_segmentation,
    is_int,
    is_number,
    load_coco,
    read_coco,
    split_categories,
    to_rle,
)
from stitch.data.common import DataError, Prepared, hold_out, read_image
from stitch.data.instance import InstancePrepared, from_coco_dicts

if TYPE_CHECKING:
    from stitch.config import CocoData

TEST_SEED = 0  # the test_fraction draw: fixed, so experiments over one file share the test images


def subset_coco(data: dict, image_ids: Iterable[int]) -> dict:
    """A COCO dict of only ``image_ids``: their images and annotations, every other key as it is."""
    keep = set(image_ids)
    return dict(
        data,
        images=[im for im in data["images"] if im["id"] in keep],
        annotations=[a for a in data["annotations"] if a["image_id"] in keep],
    )


def split_files(cfg: CocoData) -> dict[str, tuple[str, str]]:
    """``split -> (annotations, images)`` as configured, relative to ``root``."""
    out = {
        "train": (cfg.train_annotations, cfg.train_images),
        "val": (cfg.val_annotations, cfg.val_images),
    }
    if cfg.test_annotations and cfg.test_images:
        out["test"] = (cfg.test_annotations, cfg.test_images)
    return out


def split_text(cfg: CocoData) -> str:
    """How the splits were made, for the data line of the log."""
    text = f"{cfg.train_annotations} / {cfg.val_annotations}"
    if cfg.test_annotations:
        return f"{text} / test {cfg.test_annotations}"
    if cfg.test_fraction:
        return f"{text}, test: {cfg.test_fraction} of the train images (seed {TEST_SEED})"
    return text


def check_test_disjoint(files: dict[str, list[str]], test_ann: Path) -> None:
    """No image file (absolute, normalised path) both in the test split and in train or val."""
    if "test" not in files:
        return
    test = set(files["test"])
    for split in ("train", "val"):
        both = sorted(test.intersection(files[split]))
        if both:
            raise DataError(
                f"{both[0]} is in both the {split} and the test split ({len(both)} shared); a sample in both "
                "splits leaks: remove it from one file",
                test_ann,
            )


def image_paths(images_dir: Path, file_names: Iterable[str]) -> list[str]:
    """The absolute normalised path of each image file (no file-system access)."""
    base = os.path.abspath(images_dir)
    return [os.path.normpath(os.path.join(base, str(f))) for f in file_names]


def check_root(cfg: CocoData) -> Path:
    """``cfg.root`` expanded, or a one-line error when it is not a folder."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(
            "COCO folder not found; set data.root to the folder holding annotations/ and the image folders",
            root,
        )
    return root


def check_annotations(data: dict, ann_file: Path) -> dict[str, int]:
    """The semantic task's build-time check of a COCO dict (already through ``check_coco``), without
    rasterising anything: image sizes are positive integers; each annotation's ``bbox``
    (:func:`~stitch.data.coco_format.check_bbox`), ``area`` and ``segmentation``
    (:func:`~stitch.data.coco_format.check_segmentation`: an RLE's size is its image's) fit its
    image. Returns the skip counts (``short_polygons``, ``no_polygon``), as the instance task's."""
    images: dict[Any, dict] = {}
    for im in data["images"]:
        h, w = im["height"], im["width"]
        if not (is_int(h) and is_int(w) and h > 0 and w > 0):
            raise DataError(
                f"image {im['id']} ({im['file_name']}): height/width must be positive integers, got "
                f"{h!r}/{w!r}",
                ann_file,
            )
        images[im["id"]] = im
    counts = {"short_polygons": 0, "no_polygon": 0}
    for ann in data["annotations"]:
        im = images[ann["image_id"]]
        where = f"annotation {ann['id']} (image {im['file_name']})"
        check_bbox(ann.get("bbox"), im["height"], im["width"], where, ann_file)
        if "area" in ann and not is_number(ann["area"]):
            raise DataError(f"{where}: area must be a number, got {str(ann['area'])[:40]}", ann_file)
        seg = ann["segmentation"]
        short = check_segmentation(seg, im["height"], im["width"], where, ann_file)
        counts["short_polygons"] += short
        counts["no_polygon"] += int(isinstance(seg, list) and short == len(seg))
    return counts


@dataclass
class CocoSource:
    """Semantic masks of the images of one COCO split."""

    coco: Any
    ann_file: Path
    images_dir: Path
    image_ids: list[int]
    cat_to_label: dict[int, int]
    ignore_index: int

    def __len__(self) -> int:
        return len(self.image_ids)

    def name(self, i: int) -> str:
        return Path(self.coco.imgs[self.image_ids[i]]["file_name"]).stem

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        from pycocotools import mask as mask_util

        info = self.coco.imgs[self.image_ids[i]]
        path = self.images_dir / info["file_name"]
        image = read_image(path, 3)
        h, w = int(info["height"]), int(info["width"])
        if image.shape[:2] != (h, w):
            raise DataError(
                f"image is {image.shape[1]}x{image.shape[0]} but {self.ann_file.name} says {w}x{h} (WxH); "
                "fix the JSON or the file",
                path,
            )
        mask = np.zeros((h, w), dtype=np.int64)
        anns = self.coco.imgToAnns.get(info["id"], [])
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        objects = sorted(
            (a for a in anns if not a.get("iscrowd", 0)), key=lambda a: -float(a.get("area", 0.0))
        )
        for ann in objects + crowd:
            # checked at build time (check_annotations): to_rle only skips short polygons here
            rle, _, _ = to_rle(ann["segmentation"], h, w, f"annotation {ann['id']}", self.ann_file)
            if rle is None:
                continue
            with warnings.catch_warnings():  # pycocotools' numpy-2 copy= DeprecationWarning
                warnings.simplefilter("ignore", DeprecationWarning)
                m = mask_util.decode(rle).astype(bool)
            mask[m] = self.ignore_index if ann.get("iscrowd", 0) else self.cat_to_label[ann["category_id"]]
        return image, mask


def build(cfg: CocoData, cache_dir: Path | None = None) -> Prepared:
    root = check_root(cfg)
    sources: dict[str, CocoSource] = {}
    skipped: dict[str, dict[str, int]] = {}
    cats: list[dict] | None = None
    for split, (ann_rel, img_rel) in split_files(cfg).items():
        ann_file, images_dir = root / ann_rel, root / img_rel
        coco = load_coco(ann_file)
        skipped[split] = check_annotations(coco.dataset, ann_file)
        if not images_dir.is_dir():
            raise DataError(f"image folder not found; check data.{split}_images", images_dir)
        cats = split_categories(coco.dataset, ann_file, cats)
        ids = sorted(coco.imgs)
        check_images_exist([coco.imgs[i] for i in ids], images_dir, ann_file, split)
        cat_to_label = {c["id"]: k for k, c in enumerate(cats, 1)}
        sources[split] = CocoSource(coco, ann_file, images_dir, ids, cat_to_label, cfg.ignore_index)
    assert cats is not None
    if cfg.test_fraction:
        tr = sources["train"]
        kept, held = hold_out(tr.image_ids, cfg.test_fraction, TEST_SEED, "data.test_fraction", tr.ann_file)
        sources["train"], sources["test"] = replace(tr, image_ids=kept), replace(tr, image_ids=held)
    if "test" in sources:
        check_test_disjoint(
            {
                s: image_paths(src.images_dir, (src.coco.imgs[i]["file_name"] for i in src.image_ids))
                for s, src in sources.items()
            },
            sources["test"].ann_file,
        )
    names = ["background"] + [str(c.get("name", c["id"])) for c in cats]
    return Prepared(
        train=sources["train"],
        val=sources["val"],
        test=sources.get("test"),
        num_classes=len(names),
        in_channels=3,
        class_names=names,
        info={
            "dataset": "coco",
            "root": str(root),
            "split": split_text(cfg),
            **{s: len(src) for s, src in sources.items()},
            **({"skipped": skipped} if any(any(c.values()) for c in skipped.values()) else {}),
        },
    )


def build_instance(cfg: CocoData, cache_dir: Path | None = None) -> InstancePrepared:
    """The instance task over the same files (see :mod:`stitch.data.instance`)."""
    root = check_root(cfg)
    splits: dict[str, tuple[dict, Path, Path]] = {}
    for split, (ann_rel, img_rel) in split_files(cfg).items():
        ann_file = root / ann_rel
        # from_coco_dicts checks every dict; a fraction split needs a checked one to cut
        splits[split] = (read_coco(ann_file, check=bool(cfg.test_fraction)), ann_file, root / img_rel)
    if cfg.test_fraction:
        data, ann_file, images_dir = splits["train"]
        kept, held = hold_out(
            sorted(im["id"] for im in data["images"]),
            cfg.test_fraction,
            TEST_SEED,
            "data.test_fraction",
            ann_file,
        )
        splits["train"] = (subset_coco(data, kept), ann_file, images_dir)
        splits["test"] = (subset_coco(data, held), ann_file, images_dir)
    prep = from_coco_dicts(splits, {"dataset": "coco", "root": str(root), "split": split_text(cfg)})
    if prep.test is not None:
        check_test_disjoint(
            {
                s: image_paths(src.images_dir, (r.file_name for r in src.records))
                for s, src in (("train", prep.train), ("val", prep.val), ("test", prep.test))
            },
            prep.test.ann_file,
        )
    return prep

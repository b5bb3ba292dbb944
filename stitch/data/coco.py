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
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stitch.data.coco_format import check_images_exist, load_coco, split_categories
from stitch.data.common import DataError, Prepared, read_image
from stitch.data.instance import InstancePrepared, from_coco_files
from stitch.errors import exception_text

if TYPE_CHECKING:
    from stitch.config import CocoData


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
            try:
                with warnings.catch_warnings():  # pycocotools' numpy-2 copy= DeprecationWarning
                    warnings.simplefilter("ignore", DeprecationWarning)
                    m = self.coco.annToMask(ann).astype(bool)
            except Exception as exc:  # pycocotools raises bare exceptions on bad polygons/RLE
                reason = exception_text(exc, join_lines=True, limit=200)
                raise DataError(
                    f"annotation {ann['id']} has an unreadable segmentation ({reason}); fix or drop it",
                    self.ann_file,
                ) from None
            mask[m] = self.ignore_index if ann.get("iscrowd", 0) else self.cat_to_label[ann["category_id"]]
        return image, mask


def build(cfg: CocoData, cache_dir: Path | None = None) -> Prepared:
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(
            "COCO folder not found; set data.root to the folder holding annotations/ and the image folders",
            root,
        )
    sources: dict[str, CocoSource] = {}
    cats: list[dict] | None = None
    for split, ann_rel, img_rel in (
        ("train", cfg.train_annotations, cfg.train_images),
        ("val", cfg.val_annotations, cfg.val_images),
    ):
        ann_file, images_dir = root / ann_rel, root / img_rel
        coco = load_coco(ann_file)
        if not images_dir.is_dir():
            raise DataError(f"image folder not found; check data.{split}_images", images_dir)
        cats = split_categories(coco.dataset, ann_file, cats)
        ids = sorted(coco.imgs)
        check_images_exist([coco.imgs[i] for i in ids], images_dir, ann_file, split)
        cat_to_label = {c["id"]: k for k, c in enumerate(cats, 1)}
        sources[split] = CocoSource(coco, ann_file, images_dir, ids, cat_to_label, cfg.ignore_index)
    assert cats is not None
    names = ["background"] + [str(c.get("name", c["id"])) for c in cats]
    return Prepared(
        train=sources["train"],
        val=sources["val"],
        num_classes=len(names),
        in_channels=3,
        class_names=names,
        info={
            "dataset": "coco",
            "root": str(root),
            "split": f"{cfg.train_annotations} / {cfg.val_annotations}",
            "train": len(sources["train"]),
            "val": len(sources["val"]),
        },
    )


def build_instance(cfg: CocoData, cache_dir: Path | None = None) -> InstancePrepared:
    """The instance task over the same files (see :mod:`stitch.data.instance`)."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(
            "COCO folder not found; set data.root to the folder holding annotations/ and the image folders",
            root,
        )
    return from_coco_files(
        {
            "train": (root / cfg.train_annotations, root / cfg.train_images),
            "val": (root / cfg.val_annotations, root / cfg.val_images),
        },
        {"dataset": "coco", "root": str(root), "split": f"{cfg.train_annotations} / {cfg.val_annotations}"},
    )

"""``coco`` (semantic): class masks rendered from a COCO instances JSON with pycocotools.

Category ids map to 1..K in increasing id order (0 is background; the train file's categories,
which the val file must share). Per image, non-crowd objects are drawn largest first, so a small
object lying on a larger one stays visible; crowd regions (``iscrowd: 1``) are then set to
``ignore_index``. Images without annotations are all background. Image files are checked to exist
at build time; masks are rendered as samples load.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stitch.data.common import DataError, Prepared, one_line, read_image, require_nonempty


def load_coco(path: Path) -> Any:
    """A pycocotools ``COCO`` index of an instances JSON, with one-line errors."""
    from pycocotools.coco import COCO

    if not path.is_file():
        raise DataError("annotation file not found; check data.root and the *_annotations paths", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"not a readable JSON file ({one_line(exc)}); re-download or re-export it", path) from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError("not a COCO instances file: needs 'images', 'annotations' and 'categories' lists", path)
    image_ids = set()
    for im in data["images"]:
        if not isinstance(im, dict) or not {"id", "file_name", "height", "width"} <= im.keys():
            raise DataError(f"an image entry lacks id/file_name/height/width: {str(im)[:80]}", path)
        image_ids.add(im["id"])
    cat_ids = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not {"id", "image_id", "category_id", "segmentation"} <= ann.keys():
            raise DataError(f"an annotation lacks id/image_id/category_id/segmentation: {str(ann)[:80]}", path)
        if ann["category_id"] not in cat_ids:
            raise DataError(f"annotation {ann['id']} has category_id {ann['category_id']}, which is not in 'categories'", path)
        if ann["image_id"] not in image_ids:
            raise DataError(f"annotation {ann['id']} refers to image_id {ann['image_id']}, which is not in 'images'", path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


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
            raise DataError(f"image is {image.shape[1]}x{image.shape[0]} but {self.ann_file.name} says {w}x{h} (WxH); fix the JSON or the file", path)
        mask = np.zeros((h, w), dtype=np.int64)
        anns = self.coco.imgToAnns.get(info["id"], [])
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        objects = sorted((a for a in anns if not a.get("iscrowd", 0)), key=lambda a: -float(a.get("area", 0.0)))
        for ann in objects + crowd:
            try:
                with warnings.catch_warnings():  # pycocotools' numpy-2 copy= DeprecationWarning
                    warnings.simplefilter("ignore", DeprecationWarning)
                    m = self.coco.annToMask(ann).astype(bool)
            except Exception as exc:  # pycocotools raises bare exceptions on bad polygons/RLE
                raise DataError(f"annotation {ann['id']} has an unreadable segmentation ({one_line(exc)}); fix or drop it", self.ann_file) from None
            mask[m] = self.ignore_index if ann.get("iscrowd", 0) else self.cat_to_label[ann["category_id"]]
        return image, mask


def build(cfg: Any, cache_dir: Path | None = None) -> Prepared:
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError("COCO folder not found; set data.root to the folder holding annotations/ and the image folders", root)
    sources: dict[str, CocoSource] = {}
    cats: list[dict] = []
    for split, ann_rel, img_rel in (("train", cfg.train_annotations, cfg.train_images), ("val", cfg.val_annotations, cfg.val_images)):
        ann_file, images_dir = root / ann_rel, root / img_rel
        coco = load_coco(ann_file)
        if not images_dir.is_dir():
            raise DataError(f"image folder not found; check data.{split}_images", images_dir)
        these = sorted(coco.dataset["categories"], key=lambda c: c["id"])
        if not these:
            raise DataError("no categories; a segmentation needs at least one", ann_file)
        if split == "train":
            cats = these
        elif [c["id"] for c in these] != [c["id"] for c in cats]:
            raise DataError(f"its category ids differ from the train file's ({[c['id'] for c in cats][:8]} …); both splits need the same categories", ann_file)
        ids = sorted(coco.imgs)
        require_nonempty(split, len(ids), ann_file, "the file lists no images")
        missing = [coco.imgs[i]["file_name"] for i in ids if not (images_dir / coco.imgs[i]["file_name"]).is_file()]
        if missing:
            raise DataError(f"image listed in {ann_file.name} is missing ({len(missing)} of {len(ids)} missing); check data.{split}_images", images_dir / missing[0])
        cat_to_label = {c["id"]: k for k, c in enumerate(cats, 1)}
        sources[split] = CocoSource(coco, ann_file, images_dir, ids, cat_to_label, cfg.ignore_index)
    names = ["background"] + [str(c.get("name", c["id"])) for c in cats]
    return Prepared(
        train=sources["train"], val=sources["val"], num_classes=len(names), in_channels=3, class_names=names,
        info={"dataset": "coco", "root": str(root), "split": f"{cfg.train_annotations} / {cfg.val_annotations}",
              "train": len(sources["train"]), "val": len(sources["val"])},
    )

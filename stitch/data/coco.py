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

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stitch.data.common import DataError, Prepared, one_line, read_image, require_nonempty


def read_coco(path: Path, check: bool = True) -> dict:
    """The dict of a COCO instances JSON file, checked by :func:`check_coco` (one-line errors)
    unless ``check`` is false (for a caller that checks it itself)."""
    if not path.is_file():
        raise DataError("annotation file not found; check data.root and the *_annotations paths", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"not a readable JSON file ({one_line(exc)}); re-download or re-export it", path) from None
    if check:
        check_coco(data, path)
    return data


def check_coco(data: Any, path: Path) -> None:
    """The structure every COCO instances dict needs: ``images`` (id, file_name, height, width),
    ``annotations`` (id, image_id, category_id, segmentation) referring to known images and
    categories, and ``categories``. ``path`` names the file in the errors."""
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError("not a COCO instances file: needs 'images', 'annotations' and 'categories' lists", path)
    image_ids = set()
    for im in data["images"]:
        if not isinstance(im, dict) or not {"id", "file_name", "height", "width"} <= im.keys():
            raise DataError(f"an image entry lacks id/file_name/height/width: {str(im)[:80]}", path)
        if not _is_id(im["id"]):
            raise DataError(f"image id {str(im['id'])[:40]} ({im['file_name']}) is not an integer", path)
        image_ids.add(im["id"])
    cat_ids = set()
    for c in data["categories"]:
        if not isinstance(c, dict) or not _is_id(c.get("id")):
            raise DataError(f"a category entry lacks an integer id: {str(c)[:80]}", path)
        if c["id"] in cat_ids:
            raise DataError(f"category id {c['id']} appears twice in 'categories'", path)
        cat_ids.add(c["id"])
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not {"id", "image_id", "category_id", "segmentation"} <= ann.keys():
            raise DataError(f"an annotation lacks id/image_id/category_id/segmentation: {str(ann)[:80]}", path)
        for key in ("id", "image_id", "category_id"):
            if not _is_id(ann[key]):
                raise DataError(f"annotation {str(ann['id'])[:40]}: {key} {str(ann[key])[:40]} is not an integer", path)
        if ann["category_id"] not in cat_ids:
            raise DataError(f"annotation {ann['id']} has category_id {ann['category_id']}, which is not in 'categories'", path)
        if ann["image_id"] not in image_ids:
            raise DataError(f"annotation {ann['id']} refers to image_id {ann['image_id']}, which is not in 'images'", path)


def _is_id(v: Any) -> bool:
    """COCO ids are integers (strings are tolerated: pycocotools only needs them hashable)."""
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def coco_index(data: dict) -> Any:
    """A pycocotools ``COCO`` over an (already checked) instances dict, without its prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco(path: Path) -> Any:
    """A pycocotools ``COCO`` index of an instances JSON, with one-line errors."""
    return coco_index(read_coco(path))


def split_categories(data: dict, ann_file: Path, train_cats: list[dict] | None) -> list[dict]:
    """The categories of a split sorted by id; the val split must have the train split's ids."""
    these = sorted(data["categories"], key=lambda c: c["id"])
    if not these:
        raise DataError("no categories; a segmentation needs at least one", ann_file)
    if train_cats is not None and [c["id"] for c in these] != [c["id"] for c in train_cats]:
        raise DataError(f"its category ids differ from the train file's ({[c['id'] for c in train_cats][:8]} …); both splits need the same categories", ann_file)
    return these


def check_images_exist(images: list[dict], images_dir: Path, ann_file: Path, split: str) -> None:
    """Every image the split lists is a file in ``images_dir`` (a stat each), else a one-line error."""
    require_nonempty(split, len(images), ann_file, "the file lists no images")
    missing = [im["file_name"] for im in images if not (images_dir / str(im["file_name"])).is_file()]
    if missing:
        raise DataError(f"image listed in {ann_file.name} is missing ({len(missing)} of {len(images)} missing); "
                        f"restore it, remove it from the JSON, or check data.{split}_images", images_dir / str(missing[0]))


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
    cats: list[dict] | None = None
    for split, ann_rel, img_rel in (("train", cfg.train_annotations, cfg.train_images), ("val", cfg.val_annotations, cfg.val_images)):
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
        train=sources["train"], val=sources["val"], num_classes=len(names), in_channels=3, class_names=names,
        info={"dataset": "coco", "root": str(root), "split": f"{cfg.train_annotations} / {cfg.val_annotations}",
              "train": len(sources["train"]), "val": len(sources["val"])},
    )


def build_instance(cfg: Any, cache_dir: Path | None = None) -> Any:
    """The instance task over the same files (see :mod:`stitch.data.instance`)."""
    from stitch.data.instance import from_coco_files

    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError("COCO folder not found; set data.root to the folder holding annotations/ and the image folders", root)
    return from_coco_files(
        {"train": (root / cfg.train_annotations, root / cfg.train_images), "val": (root / cfg.val_annotations, root / cfg.val_images)},
        {"dataset": "coco", "root": str(root), "split": f"{cfg.train_annotations} / {cfg.val_annotations}"},
    )

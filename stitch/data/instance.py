"""Instance segmentation (task ``instance``): COCO-style objects for torchvision's Mask R-CNN.

Every instance dataset ends up as a COCO instances dict per split (``coco`` reads its JSON files;
``nuclei`` and ``shapes`` read the JSON files written beside their prepared images; ``voc`` builds
the dicts in memory from ``SegmentationObject``/``SegmentationClass``), which :func:`parse_split`
checks and turns into per-image object lists (label, RLE) and, for val, the ``coco_gt`` used by
the evaluation.

Policy for bad annotations: everything is checked when the dataset is built, before any
training; nothing is left to fail deep inside an epoch.

- **One-line** :class:`DataError` **(the build stops)**: a missing image file, an unknown
  ``category_id`` or ``image_id``, ids that are not positive integers or repeat, an image
  ``height``/``width`` that is not a positive integer, a ``segmentation`` that is neither a list of
  polygons (flat lists of an even number of finite numbers) nor an RLE dict (``size`` equal to
  the image's ``[height, width]``; ``counts`` a COCO-compressed string or a list of non-negative
  integers, in both cases adding up to height x width), a ``bbox`` that is not 4 finite numbers,
  has a negative width or height or reaches outside its image (by more than a pixel), a non-numeric
  ``area``, an ``iscrowd`` other than 0/1. A zero-width or zero-height ``bbox`` is accepted: the
  training boxes come from the masks (a good mask is not dropped for a wrong box).
- **Skipped and counted** (``info["skipped"][split]``, shown by ``DataBundle.describe()``): a
  polygon with fewer than 3 points (``short_polygons``; the annotation keeps its other polygons);
  an annotation left with no usable polygon (``no_polygon``); a degenerate object (``degenerate``:
  its mask is empty; the JSON ``bbox`` is not used, training boxes come from the masks); for
  ``voc``, an object whose pixels have no class in ``SegmentationClass`` (``no_class``). Annotations
  without a usable polygon are removed from ``coco_gt`` too (COCOeval cannot rasterise them) and
  short polygons are left out of their annotation's segmentation there; degenerate objects stay in
  ``coco_gt``, as they are in the official ground truth (an empty object nobody can detect), so
  ``coco_gt``'s non-crowd annotations with a non-empty mask are exactly the val targets.
- **Kept, not trained on**: crowd regions (``iscrowd: 1``) are left out of the targets but kept in
  ``coco_gt`` (COCOeval ignores detections on them); images without annotations are kept with
  empty targets.

Targets: boxes are the tight boxes of the rasterised masks (``[x0, y0, x1 + 1, y1 + 1]`` of the
mask's pixels, COCO's ``x + w`` convention), so boxes and masks always agree; labels are 1..K for the
category ids in increasing order (``label_to_category`` maps back).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stitch.data.coco_format import (
    check_bbox,
    check_coco,
    check_images_exist,
    coco_index,
    is_int,
    is_number,
    read_coco,
    split_categories,
    to_rle,
)
from stitch.data.common import DataError, SourceDataset, read_image

if TYPE_CHECKING:
    from stitch.config import DataBase

SKIP_KINDS = ("short_polygons", "no_polygon", "degenerate")


# ----------------------------------------------------------------------------- checking annotations
@dataclass
class ImageRecord:
    """One image of a split: where it is and its usable (non-crowd) objects."""

    image_id: int
    file_name: str
    height: int
    width: int
    labels: list[int] = field(default_factory=list)
    rles: list[dict] = field(default_factory=list)  # compressed RLE, counts as bytes


def parse_split(
    data: dict, ann_file: Any, cat_to_label: dict[int, int], keep_gt: bool
) -> tuple[list[ImageRecord], dict | None, dict[str, int]]:
    """Check a COCO instances dict (already through :func:`stitch.data.coco_format.check_coco`) and
    turn it into ``(records sorted by image id, cleaned dict for coco_gt or None, counts)``; see the
    module docstring for what is an error and what is skipped."""
    from pycocotools import mask as mask_util

    counts = dict.fromkeys(SKIP_KINDS, 0)
    counts.update(crowd=0, objects=0, zero_size_bbox=0)
    records: dict[int, ImageRecord] = {}
    for im in data["images"]:
        iid, h, w = im["id"], im["height"], im["width"]
        if not is_int(iid) or iid <= 0:
            raise DataError(
                f"image id {iid!r} ({im.get('file_name')}): image ids must be positive integers", ann_file
            )
        if iid in records:
            raise DataError(f"image id {iid} appears twice in 'images'; ids must be unique", ann_file)
        if not (is_int(h) and is_int(w) and h > 0 and w > 0):
            raise DataError(
                f"image {iid} ({im.get('file_name')}): height/width must be positive integers, got "
                f"{h!r}/{w!r}",
                ann_file,
            )
        if not isinstance(im["file_name"], str) or not im["file_name"]:
            raise DataError(f"image {iid}: file_name must be a non-empty string", ann_file)
        records[iid] = ImageRecord(iid, im["file_name"], h, w)
    gt_anns: list[dict] = []
    seen: set[int] = set()
    for ann in data["annotations"]:
        aid = ann["id"]
        if not is_int(aid) or aid <= 0:
            raise DataError(
                f"annotation id {aid!r}: ids must be positive integers (pycocotools' COCOeval treats id 0 as "
                "'no match')",
                ann_file,
            )
        if aid in seen:
            raise DataError(f"annotation id {aid} appears twice; ids must be unique", ann_file)
        seen.add(aid)
        rec = records[ann["image_id"]]
        where = f"annotation {aid} (image {rec.file_name})"
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise DataError(f"{where}: iscrowd must be 0 or 1, got {crowd!r}", ann_file)
        bbox = ann.get("bbox")
        check_bbox(bbox, rec.height, rec.width, where, ann_file)
        if bbox is not None and (bbox[2] == 0 or bbox[3] == 0):
            counts["zero_size_bbox"] += 1  # accepted, and said in describe(): boxes come from the masks
        if "area" in ann and not is_number(ann["area"]):
            raise DataError(f"{where}: area must be a number, got {str(ann['area'])[:40]}", ann_file)
        rle, short, seg = to_rle(ann["segmentation"], rec.height, rec.width, where, ann_file)
        counts["short_polygons"] += short
        if rle is None:
            counts["no_polygon"] += 1
            continue
        area = float(mask_util.area(rle))
        if crowd:
            counts["crowd"] += 1
        elif area == 0:  # nothing to train on; still ground truth for the evaluation, as in COCO's own
            counts["degenerate"] += 1
        else:
            rec.labels.append(cat_to_label[ann["category_id"]])
            rec.rles.append(rle)
            counts["objects"] += 1
        if keep_gt:
            g = dict(ann, iscrowd=int(crowd))
            if short:
                g["segmentation"] = seg
            if short or "area" not in g:
                g["area"] = area
            if short or bbox is None:
                g["bbox"] = [float(v) for v in mask_util.toBbox(rle)]
            gt_anns.append(g)
    gt = None
    if keep_gt:
        gt = {k: v for k, v in data.items() if k not in ("annotations",)}
        gt["annotations"] = gt_anns
    return [records[i] for i in sorted(records)], gt, counts


# ----------------------------------------------------------------------------- sources and the dataset
@dataclass
class InstanceSource:
    """The images of one split with their objects, loaded as numpy arrays."""

    records: list[ImageRecord]
    images_dir: Path
    ann_file: Any

    def __len__(self) -> int:
        return len(self.records)

    def name(self, i: int) -> str:
        return Path(self.records[i].file_name).stem

    def load(self, i: int) -> tuple[np.ndarray, dict]:
        """``(image uint8 HxWx3, {"boxes" float32 Nx4 xyxy, "labels" int64 N, "masks" uint8 NxHxW,
        "image_id"})``."""
        from pycocotools import mask as mask_util

        rec = self.records[i]
        path = self.images_dir / rec.file_name
        image = read_image(path, 3)
        h, w = rec.height, rec.width
        if image.shape[:2] != (h, w):
            raise DataError(
                f"image is {image.shape[1]}x{image.shape[0]} but {Path(str(self.ann_file)).name} says "
                f"{w}x{h} (WxH); fix the JSON or the file",
                path,
            )
        n = len(rec.rles)
        if n:
            with warnings.catch_warnings():  # pycocotools' numpy-2 copy= DeprecationWarning
                warnings.simplefilter("ignore", DeprecationWarning)
                masks = np.ascontiguousarray(mask_util.decode(rec.rles).transpose(2, 0, 1))
            xywh = mask_util.toBbox(rec.rles).astype(np.float32).reshape(n, 4)
            boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        else:
            masks = np.zeros((0, h, w), np.uint8)
            boxes = np.zeros((0, 4), np.float32)
        return image, {
            "boxes": boxes,
            "labels": np.asarray(rec.labels, np.int64),
            "masks": masks,
            "image_id": rec.image_id,
        }


class InstanceDataset(SourceDataset):
    """``{"image": float32 3xHxW in [0, 1], "target": {"boxes", "labels", "masks", "image_id"},
    "index": int}`` per image. Validation items are the images at their native size; training
    items are augmented (torch's global RNG), objects whose box or mask collapsed are dropped, and
    the boxes are set to the tight boxes of the augmented masks (flips and rot90 are exact;
    after a rescale, nearest resampling can thin a mask by a pixel, and box and mask then still
    agree)."""

    def __getitem__(self, i: int) -> dict:
        import torch
        from torchvision import tv_tensors

        i = self.index(i)
        image, t = self.source.load(i)
        h, w = image.shape[:2]
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(t["boxes"]), format="XYXY", canvas_size=(h, w)
            ),
            "labels": torch.from_numpy(t["labels"]),
            "masks": tv_tensors.Mask(torch.from_numpy(t["masks"])),
            "image_id": int(t["image_id"]),
        }
        img, target = self.transform(img, target)
        masks = target["masks"].as_subclass(torch.Tensor).to(torch.uint8)
        boxes = target["boxes"].as_subclass(torch.Tensor).to(torch.float32)
        labels = target["labels"].to(torch.int64)
        if self.split == "train" and len(masks):
            keep = (masks.flatten(1) > 0).any(1)  # an object whose mask vanished when resized
            masks, labels = masks[keep], labels[keep]
            boxes = tight_boxes(masks)  # nearest resampling can thin a mask: keep boxes on it
        return {
            "image": img.as_subclass(torch.Tensor).contiguous(),
            "target": {
                "boxes": (boxes.reshape(-1, 4) + 0.0).contiguous(),  # + 0.0: no -0.0 from flips
                "labels": labels.contiguous(),
                "masks": masks.contiguous(),
                "image_id": int(t["image_id"]),
            },
            "index": i,
        }

    def __repr__(self) -> str:
        return f"InstanceDataset({self.split}, {len(self)} images)"


def tight_boxes(masks: Any) -> Any:
    """float32 Nx4 ``[x0, y0, x1 + 1, y1 + 1]`` of the pixels of each (non-empty) mask NxHxW."""
    import torch
    from torchvision.ops import masks_to_boxes

    if len(masks) == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    b = masks_to_boxes(masks > 0).to(torch.float32)
    return b + torch.tensor([0.0, 0.0, 1.0, 1.0])


def collate_instances(batch: Sequence[dict]) -> dict:
    """DataLoader ``collate_fn`` of the instance task: images of different sizes stay a list
    (torchvision's detection models take ``list[Tensor]`` and ``list[dict]``)."""
    return {
        "images": [b["image"] for b in batch],
        "targets": [b["target"] for b in batch],
        "index": [b["index"] for b in batch],
    }


# ----------------------------------------------------------------------------- building
@dataclass
class InstancePrepared:
    """What a dataset module's ``build_instance`` hands to :func:`stitch.data.build_data`."""

    train: InstanceSource
    val: InstanceSource
    class_names: list[str]
    label_to_category: dict[int, int]
    coco_gt: Any
    info: dict = field(default_factory=dict)
    test: InstanceSource | None = None  # the held-out test split, where the experiment has one
    coco_gt_test: Any = None  # its pycocotools COCO


def from_coco_dicts(
    splits: dict[str, tuple[dict, Any, Path]],
    info: dict,
    extra_skips: dict[str, dict[str, int]] | None = None,
) -> InstancePrepared:
    """Build the splits from ``split -> (COCO dict, file named in errors, images folder)``: ``train``
    and ``val``, and ``test`` when given.

    The dicts are checked (:func:`stitch.data.coco_format.check_coco`), the val and test splits must
    have the train split's category ids, every image file must exist. ``extra_skips`` adds a dataset's own
    skip counts (VOC's ``no_class``) to ``info["skipped"]``."""
    cats: list[dict] | None = None
    sources: dict[str, InstanceSource] = {}
    skipped: dict[str, dict[str, int]] = {}
    objects: dict[str, dict[str, int]] = {}
    gts: dict[str, dict] = {}
    for split in [s for s in ("train", "val", "test") if s in splits]:
        data, ann_file, images_dir = splits[split]
        check_coco(data, ann_file)
        if not images_dir.is_dir():
            raise DataError(f"image folder not found; check data.{split}_images", images_dir)
        cats = split_categories(data, ann_file, cats)
        for c in cats:
            if not is_int(c["id"]):
                raise DataError(f"category id {c['id']!r} is not an integer", ann_file)
        check_images_exist(data["images"], images_dir, ann_file, split)
        cat_to_label = {c["id"]: k for k, c in enumerate(cats, 1)}
        records, g, counts = parse_split(data, ann_file, cat_to_label, keep_gt=split != "train")
        if g is not None:
            gts[split] = g
        sources[split] = InstanceSource(records, images_dir, ann_file)
        skipped[split] = {k: counts[k] for k in SKIP_KINDS}
        skipped[split].update((extra_skips or {}).get(split, {}))
        objects[split] = {
            "objects": counts["objects"],
            "crowd": counts["crowd"],
            "empty_images": sum(1 for r in records if not r.rles),
            **({"zero_size_bbox": counts["zero_size_bbox"]} if counts["zero_size_bbox"] else {}),
        }
    assert cats is not None and "val" in gts
    names = ["background"] + [str(c.get("name", c["id"])) for c in cats]
    return InstancePrepared(
        train=sources["train"],
        val=sources["val"],
        class_names=names,
        label_to_category={k: int(c["id"]) for k, c in enumerate(cats, 1)},
        coco_gt=coco_index(gts["val"]),
        info=dict(info, **{s: len(src) for s, src in sources.items()}, skipped=skipped, objects=objects),
        test=sources.get("test"),
        coco_gt_test=coco_index(gts["test"]) if "test" in gts else None,
    )


def from_coco_files(splits: dict[str, tuple[Path, Path]], info: dict) -> InstancePrepared:
    """:func:`from_coco_dicts` over ``split -> (instances JSON file, images folder)``."""
    # from_coco_dicts runs check_coco on every dict: reading does not check a second time
    return from_coco_dicts({s: (read_coco(a, check=False), a, d) for s, (a, d) in splits.items()}, info)


def instance_transforms(cfg: DataBase, train: bool) -> Callable:
    """Joint image/boxes/masks pipeline (``transforms.v2``). Training: rotate90 -> hflip/vflip ->
    colour jitter -> float [0, 1] -> ``SanitizeBoundingBoxes`` (objects whose boxes collapsed are
    dropped; :class:`InstanceDataset` then drops empty masks and puts the boxes on the masks).
    Validation: float [0, 1] only (native size, not normalised)."""
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from stitch.data.transforms import color_jitter, flip_steps

    steps: list[Any] = []
    if train:
        aug = cfg.augment
        if aug.scale is not None:
            from stitch.config import SCALE_UNDONE_FOR_INSTANCES

            raise DataError(f"data.augment.scale {SCALE_UNDONE_FOR_INSTANCES}")
        steps += flip_steps(aug)
        if aug.color_jitter > 0:
            steps.append(color_jitter(aug.color_jitter, 3))
    steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    if train:
        steps.append(v2.SanitizeBoundingBoxes(min_size=1.0, min_area=1.0))
    return v2.Compose(steps)

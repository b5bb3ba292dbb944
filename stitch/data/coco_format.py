"""The COCO instances format, apart from any dataset: reading and checking a COCO dict, its
pycocotools index, the categories of a split, the image files it lists, and the masks of its
annotations (polygons and RLE, checked before pycocotools sees them; binary masks encoded as RLE).

Used by the ``coco`` dataset (semantic masks rendered from the JSON), by the instance layer
(:mod:`stitch.data.instance`) and by the datasets that write or build COCO dicts (``nuclei``,
``shapes``, ``voc``). Every malformed input raises a one-line :class:`DataError`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from stitch.data.common import DataError, require_nonempty
from stitch.errors import exception_text


# ----------------------------------------------------------------------------- values
def is_int(v: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_id(v: Any) -> bool:
    """COCO ids are integers (strings are tolerated: pycocotools only needs them hashable)."""
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def _numbers(values: list) -> bool:
    """A flat list of finite numbers (not bools), checked with numpy (polygons are long)."""
    if not values:
        return True
    try:
        a = np.asarray(values)
    except (ValueError, TypeError):
        return False
    return a.ndim == 1 and a.dtype.kind in "iuf" and bool(np.isfinite(a).all())


# ----------------------------------------------------------------------------- files and dicts
def read_coco(path: Path, check: bool = True) -> dict:
    """The dict of a COCO instances JSON file, checked by :func:`check_coco` (one-line errors)
    unless ``check`` is false (for a caller that checks it itself)."""
    if not path.is_file():
        raise DataError("annotation file not found; check data.root and the *_annotations paths", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exception_text(exc, join_lines=True, limit=200)
        raise DataError(
            f"not a readable JSON file ({reason}); re-download or re-export it",
            path,
        ) from None
    if check:
        check_coco(data, path)
    return data


def check_coco(data: Any, path: Path) -> None:
    """The structure every COCO instances dict needs: ``images`` (id, file_name, height, width),
    ``annotations`` (id, image_id, category_id, segmentation) referring to known images and
    categories, and ``categories``. ``path`` names the file in the errors."""
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(
            "not a COCO instances file: needs 'images', 'annotations' and 'categories' lists", path
        )
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
            raise DataError(
                f"an annotation lacks id/image_id/category_id/segmentation: {str(ann)[:80]}", path
            )
        for key in ("id", "image_id", "category_id"):
            if not _is_id(ann[key]):
                raise DataError(
                    f"annotation {str(ann['id'])[:40]}: {key} {str(ann[key])[:40]} is not an integer", path
                )
        if ann["category_id"] not in cat_ids:
            raise DataError(
                f"annotation {ann['id']} has category_id {ann['category_id']}, which is not in 'categories'; "
                "fix its category_id or add the category",
                path,
            )
        if ann["image_id"] not in image_ids:
            raise DataError(
                f"annotation {ann['id']} refers to image_id {ann['image_id']}, which is not in 'images'; "
                "fix its image_id or add the image entry",
                path,
            )


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
        raise DataError(
            f"its category ids differ from the train file's ({[c['id'] for c in train_cats][:8]} …); "
            "both splits need the same categories",
            ann_file,
        )
    return these


def check_images_exist(images: list[dict], images_dir: Path, ann_file: Path, split: str) -> None:
    """Every image the split lists is a file in ``images_dir`` (a stat each), else a one-line error."""
    require_nonempty(split, len(images), ann_file, "the file lists no images")
    missing = [im["file_name"] for im in images if not (images_dir / str(im["file_name"])).is_file()]
    if missing:
        raise DataError(
            f"image listed in {ann_file.name} is missing ({len(missing)} of {len(images)} missing); "
            f"restore it, remove it from the JSON, or check data.{split}_images",
            images_dir / str(missing[0]),
        )


# ----------------------------------------------------------------------------- masks
def mask_fields(mask: np.ndarray) -> dict[str, Any]:
    """``{"segmentation": compressed RLE (counts a str), "area", "bbox"}`` of a binary mask HxW,
    for an annotation written to (or built as) a COCO dict."""
    from pycocotools import mask as mask_util

    h, w = mask.shape
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "segmentation": {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")},
        "area": float(mask_util.area(rle)),
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
    }


def rle_string_total(s: str) -> int | None:
    """Sum of the run lengths of a COCO-compressed RLE string (pycocotools' ``rleFrString`` in
    Python), or None if the string is malformed. pycocotools does not check this itself and
    decoding a string that overruns its ``size`` writes past the mask buffer."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            return None
        counts.append(x)
    return sum(counts)


def to_rle(seg: Any, h: int, w: int, where: str, ann_file: Any) -> tuple[dict | None, int, Any]:
    """``(compressed RLE or None, polygons skipped, cleaned segmentation)`` of one annotation's
    ``segmentation``; malformed types raise :class:`DataError` (``where`` names the annotation)."""
    if isinstance(seg, list):
        return _polygons_to_rle(seg, h, w, where, ann_file)
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        return _checked_rle(seg, h, w, where, ann_file), 0, seg
    raise DataError(
        f"{where}: segmentation must be a list of polygons or an RLE dict with size and counts, "
        f"got {type(seg).__name__}",
        ann_file,
    )


def check_polygons(seg: list, h: int, w: int, where: str, ann_file: Any) -> int:
    """How many of the polygons of a list ``segmentation`` have fewer than 3 points (they are
    skipped); anything but flat lists of an even number of finite numbers is a :class:`DataError`,
    and so is a point farther outside the h x w image than the image's own width or height
    (pycocotools' rasteriser walks every pixel of the outline: a coordinate of 1e8 takes a minute
    and gigabytes; a point a little outside, as annotation tools leave, is clipped as before)."""
    if not all(isinstance(p, list) and _numbers(p) for p in seg):
        raise DataError(
            f"{where}: segmentation is a list but not of polygons "
            "(flat [x1, y1, x2, y2, ...] lists of finite numbers); fix or drop it",
            ann_file,
        )
    if any(len(p) % 2 for p in seg):
        raise DataError(
            f"{where}: a polygon has an odd number of coordinates; polygons are [x1, y1, x2, y2, ...]",
            ann_file,
        )
    for poly in seg:
        if not poly:
            continue
        a = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        far = (a[:, 0] < -w) | (a[:, 0] > 2 * w) | (a[:, 1] < -h) | (a[:, 1] > 2 * h)
        if far.any():
            x, y = (float(v) for v in a[int(np.argmax(far))])
            raise DataError(
                f"{where}: polygon point ({x:g}, {y:g}) lies far outside its {w}x{h} (WxH) image; fix the "
                "polygon or the image's width/height",
                ann_file,
            )
    return sum(1 for p in seg if len(p) < 6)


def _polygons_to_rle(seg: list, h: int, w: int, where: str, ann_file: Any) -> tuple[dict | None, int, Any]:
    """:func:`to_rle` of a list of polygons: those with fewer than 3 points are skipped."""
    from pycocotools import mask as mask_util

    short = check_polygons(seg, h, w, where, ann_file)
    polys = [p for p in seg if len(p) >= 6]
    if not polys:
        return None, short, polys
    rle = mask_util.merge(mask_util.frPyObjects(polys, h, w))
    return rle, short, (polys if short else seg)


def check_segmentation(seg: Any, h: int, w: int, where: str, ann_file: Any) -> int:
    """:func:`to_rle`'s checks without rasterising: the number of short polygons (skipped), or a
    :class:`DataError` for a malformed segmentation or an RLE that does not fit the h x w image."""
    if isinstance(seg, list):
        return check_polygons(seg, h, w, where, ann_file)
    to_rle(seg, h, w, where, ann_file)  # an RLE is checked without decoding it
    return 0


#: how far (pixels) a ``bbox`` may reach past the image's border: COCO's boxes, computed in floating
#: point from polygons, can end a fraction of a pixel outside it.
BBOX_SLACK = 1.0


def check_bbox(bbox: Any, h: int, w: int, where: str, ann_file: Any) -> None:
    """A ``bbox`` (where an annotation has one) is ``[x, y, width, height]``: 4 finite numbers, no
    negative width or height, inside the h x w image (:data:`BBOX_SLACK`); else a one-line
    :class:`DataError`. A zero width or height is accepted (training boxes come from the masks)."""
    if bbox is None:
        return
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        raise DataError(
            f"{where}: bbox must be [x, y, width, height] (4 finite numbers), got {str(bbox)[:60]}", ann_file
        )
    x, y, bw, bh = bbox
    if bw < 0 or bh < 0:
        raise DataError(
            f"{where}: bbox {bbox} has a negative width or height; COCO boxes are [x, y, width, height] "
            "(not [x1, y1, x2, y2]): fix it, or drop the bbox (stitch takes boxes from the masks)",
            ann_file,
        )
    s = BBOX_SLACK
    if x < -s or y < -s or x + bw > w + s or y + bh > h + s:
        raise DataError(
            f"{where}: bbox {bbox} reaches outside its {w}x{h} (WxH) image; fix the bbox or the image's "
            "width/height, or drop the bbox (stitch takes boxes from the masks)",
            ann_file,
        )


def _checked_rle(seg: dict, h: int, w: int, where: str, ann_file: Any) -> dict:
    """The compressed RLE of an RLE ``segmentation`` whose size and counts fit an h x w image."""
    from pycocotools import mask as mask_util

    size, counts = seg["size"], seg["counts"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int(v) for v in size)):
        raise DataError(f"{where}: RLE size must be [height, width], got {str(size)[:40]}", ann_file)
    if list(size) != [h, w]:
        raise DataError(
            f"{where}: RLE size {list(size)} differs from its image's [height, width] [{h}, {w}]; "
            "fix the annotation or the image entry",
            ann_file,
        )
    if isinstance(counts, list):
        if not all(is_int(v) and v >= 0 for v in counts) or sum(counts) != h * w:
            raise DataError(
                f"{where}: uncompressed RLE counts must be non-negative integers adding up to "
                f"height x width ({h * w})",
                ann_file,
            )
        return mask_util.frPyObjects(seg, h, w)
    if isinstance(counts, (str, bytes)):
        text = counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts
        if rle_string_total(text) != h * w:
            raise DataError(
                f"{where}: compressed RLE counts do not decode to height x width ({h * w}) pixels; "
                "re-encode the mask",
                ann_file,
            )
        return {"size": [h, w], "counts": text.encode("ascii")}
    raise DataError(
        f"{where}: RLE counts must be a string or a list of integers, got {type(counts).__name__}", ann_file
    )

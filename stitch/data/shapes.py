"""``shapes``: a seeded procedural dataset written once as real PNG files.

Each image (``image_size``, RGB) has a two-colour linear-gradient background and 1-4 shapes of
random class, size (8-22 % of the shorter side as radius), position, rotation and colour (kept
away from the background colour), overlapping in drawing order, then Gaussian pixel noise
(sigma 12). Colour tells nothing about the class; the shape does. Class 0 is background, classes
1.. are :data:`SHAPE_NAMES` in order. Image ``i`` depends only on ``(seed, i, image_size,
num_classes)`` (``numpy.random.default_rng([seed, i])``), so the same seed gives identical files.

Written to ``<cache>/shapes-n<num_images>-<H>x<W>-c<num_classes>-seed<seed>-v1/`` as
``images/00000.png`` …, ``masks/00000.png`` … (mode L, pixel = class) and ``meta.json``. The split
is by index, so the files do not depend on it (:meth:`stitch.config.ShapesData.split_counts`): the
last ``round(num_images * test_fraction)`` images (at least one when ``test_fraction`` > 0;
default 0.25) are test, the ``round(num_images * val_fraction)`` before them (at least one) are
val, the rest (at least one) train. With 64 images and the defaults: 0-31 train, 32-47 val, 48-63
test.

Instance task (:func:`build_instance`): a separate set under
``<cache>/shapes-instances-n<num_images>-<H>x<W>-c<num_classes>-seed<seed>-v2/`` drawn the same
way but with 2-5 objects per image; a later object occludes the earlier ones, so each object's
mask is its visible part (the masks of one image are disjoint; an object hidden completely is not
annotated). ``images/00000.png`` … plus ``annotations/instances.json`` (COCO, every image; RLE
masks, category ids 1.. = the class indices, image id = file index + 1) and ``meta.json``; the
split, the same as above, is cut from that file in memory (v1 wrote one file per split, with the
val count baked in).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stitch.data.coco import subset_coco
from stitch.data.coco_format import mask_fields, read_coco
from stitch.data.common import (
    FileSource,
    Prepared,
    check_prepared,
    prepare_once,
    resolve_cache_dir,
    write_json,
)
from stitch.data.instance import InstancePrepared, from_coco_dicts

if TYPE_CHECKING:
    from stitch.config import ShapesData

SHAPE_NAMES = ["circle", "square", "triangle", "cross", "ring", "star", "hexagon"]
VERSION = 1
INSTANCE_VERSION = 2  # v2: one annotation file for every image, split in memory


def _polygon(cx: float, cy: float, radii: list[float], rot: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [
        (cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
        for k, r in enumerate(radii)
    ]


def _draw_shape(kind: str, h: int, w: int, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(canvas)
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        d.ellipse([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r], fill=0)
    elif kind == "square":
        d.polygon(_polygon(cx, cy, [r] * 4, rot), fill=1)
    elif kind == "triangle":
        d.polygon(_polygon(cx, cy, [r] * 3, rot), fill=1)
    elif kind == "hexagon":
        d.polygon(_polygon(cx, cy, [r] * 6, rot), fill=1)
    elif kind == "star":
        d.polygon(_polygon(cx, cy, [r, 0.45 * r] * 5, rot), fill=1)
    elif kind == "cross":
        a = 0.33 * r  # half arm width
        pts = [
            (a, r),
            (a, a),
            (r, a),
            (r, -a),
            (a, -a),
            (a, -r),
            (-a, -r),
            (-a, -a),
            (-r, -a),
            (-r, a),
            (-a, a),
            (-a, r),
        ]
        c, s = math.cos(rot), math.sin(rot)
        d.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], fill=1)
    else:  # pragma: no cover
        raise ValueError(kind)
    return np.asarray(canvas, dtype=bool)


def render_objects(
    index: int, seed: int, size: tuple[int, int], num_classes: int, count: tuple[int, int] = (1, 5)
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Image ``index``: ``(RGB uint8 HxWx3, [(label, drawn region bool HxW)] in drawing order)``;
    ``count`` is the range ``[lo, hi)`` of the number of shapes drawn."""
    h, w = size
    rng = np.random.default_rng([seed, index])
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = math.cos(angle) * xx / max(w - 1, 1) + math.sin(angle) * yy / max(h - 1, 1)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    image = c0 + t[..., None] * (c1 - c0)
    objects: list[tuple[int, np.ndarray]] = []
    side = min(h, w)
    for _ in range(int(rng.integers(*count))):
        label = int(rng.integers(1, num_classes))
        r = rng.uniform(0.08, 0.22) * side
        cx, cy = rng.uniform(r * 0.5, w - r * 0.5), rng.uniform(r * 0.5, h - r * 0.5)
        rot = rng.uniform(0, 2 * math.pi)
        region = _draw_shape(SHAPE_NAMES[label - 1], h, w, cx, cy, r, rot)
        if not region.any():
            continue
        under = image[region].mean(axis=0)
        colour = rng.uniform(0, 255, 3)
        for _ in range(20):  # keep the shape visible against what lies under it
            if np.linalg.norm(colour - under) >= 80:
                break
            colour = rng.uniform(0, 255, 3)
        shade = 1.0 + 0.15 * (t[region] - 0.5)  # a mild gradient inside the shape too
        image[region] = colour[None, :] * shade[:, None]
        objects.append((label, region))
    image = image + rng.normal(0.0, 12.0, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), objects


def render(index: int, seed: int, size: tuple[int, int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of the dataset: ``(RGB uint8 HxWx3, mask uint8 HxW)``."""
    image, objects = render_objects(index, seed, size, num_classes)
    mask = np.zeros(size, dtype=np.uint8)
    for label, region in objects:
        mask[region] = label
    return image, mask


def visible_parts(objects: list[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
    """Each object's region minus what later objects cover; completely hidden objects dropped."""
    if not objects:
        return []
    out = []
    covered = np.zeros_like(objects[0][1])
    for label, region in reversed(objects):
        vis = region & ~covered
        covered |= region
        if vis.any():
            out.append((label, vis))
    return out[::-1]


def generate(out: Path, num_images: int, size: tuple[int, int], num_classes: int, seed: int) -> None:
    """Write ``images/``, ``masks/`` and ``meta.json`` into ``out``."""
    from PIL import Image

    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    counts = np.zeros(num_classes, dtype=np.int64)
    for i in range(num_images):
        image, mask = render(i, seed, size, num_classes)
        Image.fromarray(image, "RGB").save(out / "images" / f"{i:05d}.png")
        Image.fromarray(mask, "L").save(out / "masks" / f"{i:05d}.png")
        counts += np.bincount(mask.ravel(), minlength=num_classes)
    write_json(
        out / "meta.json",
        {
            "dataset": "shapes",
            "version": VERSION,
            "num_images": num_images,
            "image_size": list(size),
            "num_classes": num_classes,
            "seed": seed,
            "classes": ["background", *SHAPE_NAMES[: num_classes - 1]],
            "pixel_counts": counts.tolist(),
        },
    )


def build(cfg: ShapesData, cache_dir: Path | None = None) -> Prepared:
    size = (int(cfg.image_size[0]), int(cfg.image_size[1]))
    name = f"shapes-n{cfg.num_images}-{size[0]}x{size[1]}-c{cfg.num_classes}-seed{cfg.seed}-v{VERSION}"
    root = prepare_once(
        resolve_cache_dir(cfg, cache_dir),
        name,
        lambda tmp: generate(tmp, cfg.num_images, size, cfg.num_classes, cfg.seed),
    )
    n = cfg.num_images
    ranges = split_ranges(cfg)
    pairs = [(root / "images" / f"{i:05d}.png", root / "masks" / f"{i:05d}.png") for i in range(n)]
    names = ["background", *SHAPE_NAMES[: cfg.num_classes - 1]]
    fix = f"delete {root} to generate it again"
    check_prepared(pairs, root)

    def source(split: str) -> FileSource:
        return FileSource([pairs[i] for i in ranges[split]], 3, cfg.num_classes, cfg.ignore_index, fix=fix)

    return Prepared(
        train=source("train"),
        val=source("val"),
        test=source("test") if ranges["test"] else None,
        num_classes=cfg.num_classes,
        in_channels=3,
        class_names=names,
        info={
            "dataset": "shapes",
            "root": str(root),
            "split": split_text(ranges),
            **{s: len(r) for s, r in ranges.items() if r},
        },
    )


def split_ranges(cfg: ShapesData) -> dict[str, range]:
    """``split -> image indices``: train first, then val, then test (empty without a test split)."""
    n_train, n_val, n_test = cfg.split_counts()
    return {
        "train": range(n_train),
        "val": range(n_train, n_train + n_val),
        "test": range(n_train + n_val, n_train + n_val + n_test),
    }


def split_text(ranges: dict[str, range]) -> str:
    """``images 0..31 train, 32..47 val, 48..63 test`` (the splits that have images)."""
    return "images " + ", ".join(f"{r[0]}..{r[-1]} {s}" for s, r in ranges.items() if r)


INSTANCE_COUNT = (2, 6)  # 2-5 shapes per image


def generate_instances(
    out: Path, num_images: int, size: tuple[int, int], num_classes: int, seed: int
) -> None:
    """Write ``images/``, ``annotations/instances.json`` (every image) and ``meta.json`` into ``out``."""
    from PIL import Image

    (out / "images").mkdir(parents=True)
    (out / "annotations").mkdir()
    h, w = size
    cats = [
        {"id": k, "name": n, "supercategory": "shape"}
        for k, n in enumerate(SHAPE_NAMES[: num_classes - 1], 1)
    ]
    doc: dict[str, Any] = {
        "info": {"description": f"stitch shapes instances seed {seed}", "version": str(INSTANCE_VERSION)},
        "images": [],
        "annotations": [],
        "categories": cats,
    }
    for i in range(num_images):
        image, objects = render_objects(i, seed, size, num_classes, INSTANCE_COUNT)
        Image.fromarray(image, "RGB").save(out / "images" / f"{i:05d}.png")
        doc["images"].append({"id": i + 1, "file_name": f"{i:05d}.png", "height": h, "width": w})
        for label, vis in visible_parts(objects):
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": label,
                    "iscrowd": 0,
                    **mask_fields(vis),
                }
            )
    write_json(out / "annotations" / "instances.json", doc)
    write_json(
        out / "meta.json",
        {
            "dataset": "shapes-instances",
            "version": INSTANCE_VERSION,
            "num_images": num_images,
            "image_size": list(size),
            "num_classes": num_classes,
            "seed": seed,
            "objects_per_image": [INSTANCE_COUNT[0], INSTANCE_COUNT[1] - 1],
            "annotations": len(doc["annotations"]),
        },
    )


def build_instance(cfg: ShapesData, cache_dir: Path | None = None) -> InstancePrepared:
    """The instance set (module docstring), generated once, split by index and read through the
    COCO path."""
    size = (int(cfg.image_size[0]), int(cfg.image_size[1]))
    n = cfg.num_images
    name = f"shapes-instances-n{n}-{size[0]}x{size[1]}-c{cfg.num_classes}-seed{cfg.seed}-v{INSTANCE_VERSION}"
    root = prepare_once(
        resolve_cache_dir(cfg, cache_dir),
        name,
        lambda tmp: generate_instances(tmp, n, size, cfg.num_classes, cfg.seed),
    )
    ann_file = root / "annotations" / "instances.json"
    data = read_coco(ann_file)
    ranges = split_ranges(cfg)
    return from_coco_dicts(
        {
            s: (subset_coco(data, [i + 1 for i in r]), ann_file, root / "images")
            for s, r in ranges.items()
            if r
        },
        {"dataset": "shapes", "root": str(root), "split": split_text(ranges)},
    )

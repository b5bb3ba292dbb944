"""``nuclei``: the real DSB2018 fluorescence sample shipped in the ``stardist==0.9.2`` wheel.

Source: ``stardist/data/images/img2d.tif`` (512x512 uint16) and ``mask2d.tif`` (instance label
map, 125 nuclei), found with ``importlib.util.find_spec`` without importing stardist, read with
tifffile.

Split, fixed and without leakage (H = W = 512, t = ``tile``), with ``test_region: true`` (the
default; cache layout v2):

- **train**: rows 0-255 (the top half), tiles t x t with stride t/2 in both directions, plus a
  last row/column of tiles flush with the region's edge where the stride does not reach it, so
  the region is covered. t = 128: 3 x 7 = 21 tiles.
- **val**: rows 256-383, non-overlapping t x t tiles (a remainder narrower than t at the
  right/bottom is dropped; none when t divides 128). t = 128: 1 x 4 = 4 tiles. It chooses the epoch.
- **test**: rows 384-511 (the bottom quarter), tiled like val. t = 128: 4 tiles, 41 nuclei (some
  cut by row 384). The tables report it.

``test_region: false`` gives the first layout (cache layout v1, the run ids of before): train rows
0-383 (t = 128: 5 x 7 = 35 tiles), val rows 384-511 (4 tiles), no test split; the tables then
report the split that chose the epoch.

No pixel is in two splits; nuclei crossing a boundary row are cut, one part in each split. The
image is scaled to uint8 by its 1st and 99.8th percentiles, computed on the train rows only.
Semantic masks are binary (0 background, 1 nucleus).

Written once to ``<cache>/nuclei-dsb2018-tile<t>-v<layout>/``: ``images/<split>_y<row>_x<col>.png``
(mode L), ``masks/…`` (mode L, 0/1), ``train.txt``, ``val.txt`` (and ``test.txt``), and
``annotations/instances_<split>.json`` (COCO, one category ``nucleus``, RLE masks; each
annotation keeps ``instance_id``, its label in the full 512x512 map, and each image its
``tile_box`` [x0, y0, x1, y1]) for the instance task, which :func:`build_instance` reads through
:mod:`stitch.data.instance` (grey tiles repeated to RGB).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stitch.data.coco_format import mask_fields
from stitch.data.common import (
    DataError,
    FileSource,
    Prepared,
    prepare_once,
    prepared_pairs,
    resolve_cache_dir,
    wheel_files,
    write_json,
)
from stitch.data.instance import InstancePrepared, from_coco_files
from stitch.errors import exception_text

if TYPE_CHECKING:
    from stitch.config import NucleiData

#: cache layout: 1 = train/val (``test_region: false``), 2 = train/val/test
VERSION = 2
INSTALL = "pip install --no-deps stardist==0.9.2"


def sample_files() -> tuple[Path, Path]:
    """``(img2d.tif, mask2d.tif)`` of the installed stardist wheel."""
    img, mask = wheel_files(
        "stardist",
        ["data/images/img2d.tif", "data/images/mask2d.tif"],
        INSTALL,
        "the nuclei dataset is the sample image",
    )
    return img, mask


def read_tif(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        raise DataError("reading the nuclei sample needs tifffile; run: pip install tifffile") from None
    try:
        return np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises several types on a damaged file
        reason = exception_text(exc, join_lines=True, limit=200)
        raise DataError(
            f"cannot read the TIFF ({reason}); reinstall: pip install --no-deps "
            "--force-reinstall stardist==0.9.2",
            path,
        ) from None


def starts(length: int, tile: int, stride: int, cover: bool) -> list[int]:
    """Tile offsets along one axis; with ``cover`` a last tile flush with the end is added."""
    out = list(range(0, length - tile + 1, stride))
    if cover and out and out[-1] + tile < length:
        out.append(length - tile)
    return out


def split_regions(h: int, test_region: bool = True) -> dict[str, tuple[int, int]]:
    """Row range ``[start, stop)`` of each split: with a test region the bottom quarter is test, the
    quarter above it val and the top half train; without, the bottom quarter is val."""
    quarter = h // 4
    if not test_region:
        return {"train": (0, h - quarter), "val": (h - quarter, h)}
    return {"train": (0, h - 2 * quarter), "val": (h - 2 * quarter, h - quarter), "test": (h - quarter, h)}


def tile_boxes(
    h: int, w: int, tile: int, test_region: bool = True
) -> dict[str, list[tuple[int, int, int, int]]]:
    """``split -> [(y0, x0, y1, x1)]`` of the tiles (see the module docstring)."""
    regions = split_regions(h, test_region)
    band = min(b - a for split, (a, b) in regions.items() if split != "train")
    if tile > band:
        raise DataError(f"tile {tile} is larger than the val band ({band} rows); use data.tile <= {band}")
    out = {}
    for split, (r0, r1) in regions.items():
        stride, cover = (tile // 2, True) if split == "train" else (tile, False)
        out[split] = [
            (r0 + y, x, r0 + y + tile, x + tile)
            for y in starts(r1 - r0, tile, stride, cover)
            for x in starts(w, tile, stride, cover)
        ]
    return out


def to_uint8(image: np.ndarray, train_rows: tuple[int, int]) -> tuple[np.ndarray, list[float]]:
    ref = image[train_rows[0] : train_rows[1]].astype(np.float64)
    lo, hi = (float(v) for v in np.percentile(ref, (1.0, 99.8)))
    x = np.clip((image.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    return np.round(x * 255.0).astype(np.uint8), [lo, hi]


def coco_for_tiles(labels: np.ndarray, boxes: list[tuple[int, int, int, int]], names: list[str]) -> dict:
    """COCO instances dict of the tiles (RLE masks), one category ``nucleus``."""
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for img_id, ((y0, x0, y1, x1), name) in enumerate(zip(boxes, names), 1):
        crop = labels[y0:y1, x0:x1]
        images.append(
            {
                "id": img_id,
                "file_name": f"{name}.png",
                "height": y1 - y0,
                "width": x1 - x0,
                "tile_box": [x0, y0, x1, y1],
            }
        )
        for lab in np.unique(crop):
            if lab == 0:
                continue
            m = crop == lab
            full = int((labels == lab).sum())
            area = int(m.sum())
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": 1,
                    **mask_fields(m),
                    "iscrowd": 0,
                    "instance_id": int(lab),
                    "cut": area < full,
                }
            )
    return {
        "info": {
            "description": "DSB2018 sample (stardist 0.9.2 img2d/mask2d), tiles",
            "version": str(VERSION),
        },
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "nucleus", "supercategory": "nucleus"}],
    }


def prepare(out: Path, tile: int, test_region: bool = True) -> None:
    """Write the tiles, masks, split lists, COCO files and ``meta.json`` into ``out``."""
    from PIL import Image

    img_file, mask_file = sample_files()
    raw, labels = read_tif(img_file), read_tif(mask_file)
    if raw.ndim != 2 or raw.shape != labels.shape:
        raise DataError(
            f"expected a 2-D image and a label map of one shape, got {raw.shape} and {labels.shape}; "
            f"reinstall: {INSTALL}",
            img_file,
        )
    labels = labels.astype(np.int64)
    h, w = raw.shape
    regions = split_regions(h, test_region)
    image, (lo, hi) = to_uint8(raw, regions["train"])
    boxes = tile_boxes(h, w, tile, test_region)
    for d in ("images", "masks", "annotations"):
        (out / d).mkdir()
    counts = {}
    for split, bs in boxes.items():
        names = [f"{split}_y{y0:03d}_x{x0:03d}" for (y0, x0, _, _) in bs]
        for (y0, x0, y1, x1), name in zip(bs, names):
            Image.fromarray(image[y0:y1, x0:x1], "L").save(out / "images" / f"{name}.png")
            Image.fromarray((labels[y0:y1, x0:x1] > 0).astype(np.uint8), "L").save(
                out / "masks" / f"{name}.png"
            )
        (out / f"{split}.txt").write_text("".join(n + "\n" for n in names))
        coco = coco_for_tiles(labels, bs, names)
        write_json(out / "annotations" / f"instances_{split}.json", coco)
        counts[split] = {
            "tiles": len(bs),
            "annotations": len(coco["annotations"]),
            "nuclei": len({a["instance_id"] for a in coco["annotations"]}),
        }
    write_json(
        out / "meta.json",
        {
            "dataset": "nuclei",
            "version": layout_version(test_region),
            "tile": tile,
            "source": {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (img_file, mask_file)},
            "image_shape": [h, w],
            "nuclei": int(len(np.unique(labels)) - 1),
            "split": {
                **{f"{split}_rows": list(rows) for split, rows in regions.items()},
                "train_stride": tile // 2,
                "val_stride": tile,
                **({"test_stride": tile} if test_region else {}),
            },
            "percentiles_1_99.8": [lo, hi],
            "counts": counts,
        },
    )


def layout_version(test_region: bool) -> int:
    """The cache layout of a split choice (see :data:`VERSION`)."""
    return VERSION if test_region else 1


def split_text(test_region: bool) -> str:
    """How the split was made, for logs and ``info["split"]``."""
    if test_region:
        return "rows 0-255 train (stride tile/2), rows 256-383 val, rows 384-511 test (no overlap)"
    return "rows 0-383 train (stride tile/2), rows 384-511 val (no overlap)"


def prepared_root(cfg: NucleiData, cache_dir: Path | None) -> Path:
    """The prepared tiles of ``cfg`` (written on first use)."""
    tile, test_region = int(cfg.tile), bool(cfg.test_region)
    if tile > 128:  # also enforced by the schema; kept for direct callers
        raise DataError(f"tile {tile} is larger than the val band (128 rows); use data.tile <= 128")
    return prepare_once(
        resolve_cache_dir(cfg, cache_dir),
        f"nuclei-dsb2018-tile{tile}-v{layout_version(test_region)}",
        lambda tmp: prepare(tmp, tile, test_region),
    )


def splits_of(cfg: NucleiData) -> tuple[str, ...]:
    return ("train", "val", "test") if cfg.test_region else ("train", "val")


def build(cfg: NucleiData, cache_dir: Path | None = None) -> Prepared:
    root = prepared_root(cfg, cache_dir)
    fix = f"delete {root} to prepare it again"
    sources = {
        split: FileSource(prepared_pairs(root, split), 1, 2, cfg.ignore_index, fix=fix)
        for split in splits_of(cfg)
    }
    return Prepared(
        train=sources["train"],
        val=sources["val"],
        test=sources.get("test"),
        num_classes=2,
        in_channels=1,
        class_names=["background", "nucleus"],
        info={
            "dataset": "nuclei",
            "root": str(root),
            "split": split_text(cfg.test_region),
            **{split: len(src) for split, src in sources.items()},
        },
    )


def build_instance(cfg: NucleiData, cache_dir: Path | None = None) -> InstancePrepared:
    """The instance task: the tiles' COCO JSON files read by :mod:`stitch.data.instance`."""
    root = prepared_root(cfg, cache_dir)
    return from_coco_files(
        {s: (root / "annotations" / f"instances_{s}.json", root / "images") for s in splits_of(cfg)},
        {"dataset": "nuclei", "root": str(root), "split": split_text(cfg.test_region)},
    )

"""Broken datasets and annotations (issue 13): every one is a one-line error naming the file, and
where it is found does not change it (build, preflight, or a training epoch). The corpus cases in
``tests/bad_inputs/`` (``data-*``, ``coco-*``) check the exact lines through ``stitch run``; this
file checks the pieces and what the corpus cannot (a file first read while training)."""

from __future__ import annotations

import json
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import TypeAdapter
from test_bad_inputs import generators  # the corpus' data generators

from stitch.cli import main
from stitch.config import DataCfg
from stitch.data import DataError, build_data
from stitch.data.common import image_channels, max_image_pixels, read_image, read_mask

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def cfg(**kw: Any) -> Any:
    return TypeAdapter(DataCfg).validate_python(kw)


# ----------------------------------------------------------------------------- decompression bombs
@pytest.mark.parametrize("side", [14000, 10000], ids=["over_twice_the_limit", "between_once_and_twice"])
@pytest.mark.parametrize("reader", ["read_image", "read_mask", "image_channels"])
def test_decompression_bomb_is_one_line_naming_file_size_and_fix(
    tmp_path: Path, side: int, reader: str
) -> None:
    """PIL raises above twice MAX_IMAGE_PIXELS and only warns between once and twice: both refused,
    before the pixels are decoded."""
    path = tmp_path / "bomb.png"
    generators().png_bomb(path, side, side)
    assert path.stat().st_size < 300_000  # small on disk
    read = {
        "read_image": lambda p: read_image(p, 3),
        "read_mask": read_mask,
        "image_channels": image_channels,
    }
    with pytest.raises(DataError) as info:
        read[reader](path)
    msg = one_line(info)
    assert (
        str(path) in msg and f"{side * side:,} pixels" in msg and f"{max_image_pixels():,}-pixel limit" in msg
    )
    assert "resize or tile it" in msg
    assert ("mask has" if reader == "read_mask" else "image has") in msg


def test_images_below_the_limit_still_read_and_no_warning_filter_leaks(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    Image.fromarray(np.full((4, 6, 3), 9, np.uint8)).save(path)
    before = list(warnings.filters)
    assert read_image(path, 3).shape == (4, 6, 3) and read_image(path, 1).shape == (4, 6, 1)
    assert warnings.filters == before


def _folder(root: Path, n: int, size: int = 16) -> None:
    generators().folder_dataset(root.parent, root=root.name, n=n, size=size)


def _run(root: Path, tmp_path: Path, capsys: Any, extra: str = "") -> tuple[int, str]:
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "name: x\ntask: segmentation\nbaseline: {model: unet, args: {base_width: 4}}\n"
        f"data: {{dataset: folder, root: {root}, image_size: [16, 16], num_classes: 2{extra}}}\n"
        "train: {epochs: 1, batch_size: 2}\n"
    )
    capsys.readouterr()
    code = main(["run", str(exp), "--out", str(tmp_path / "out"), "--quiet", "--device", "cpu"])
    return code, capsys.readouterr().err


def test_bomb_first_read_in_training_is_the_data_error_not_a_failed_run(tmp_path: Path, capsys: Any) -> None:
    """The preflight reads only the first training batch: a bomb later in train is found by the
    epoch, and what reaches the user is still the one data line (exit 2); the run row says it too."""
    root = tmp_path / "data"
    _folder(root, n=8)
    (root / "val.txt").write_text("im7\n")
    (root / "train.txt").write_text("im0\nim1\nim2\nim3\nim4\nim5\nim6\n")
    bomb = root / "images" / "im5.png"
    generators().png_bomb(bomb, 14000, 14000)
    code, err = _run(root, tmp_path, capsys, ", train_list: train.txt, val_list: val.txt")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bomb}: image has 196,000,000 pixels"), err
    with sqlite3.connect(tmp_path / "out" / "x" / "runs.sqlite") as db:
        rows = db.execute("SELECT status, error FROM runs").fetchall()
    assert [r[0] for r in rows] == ["failed"] and "196,000,000 pixels" in rows[0][1]


def test_bomb_in_val_stops_before_anything_is_written(tmp_path: Path, capsys: Any) -> None:
    root = tmp_path / "data"
    _folder(root, n=4)
    (root / "val.txt").write_text("im3\n")
    generators().png_bomb(root / "images" / "im3.png", 10000, 10000)
    code, err = _run(root, tmp_path, capsys, ", val_list: val.txt")
    assert code == 2 and "100,000,000 pixels" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- other broken files
@pytest.mark.parametrize("kind", ["truncated-png", "truncated-jpeg", "empty"])
def test_truncated_and_empty_files_are_one_line(tmp_path: Path, kind: str) -> None:
    generators().broken_file(tmp_path, "im.png", kind)
    path = next(tmp_path.glob("im.*"))
    with pytest.raises(DataError) as info:
        read_image(path, 3)
    msg = one_line(info)
    assert msg.startswith(f"{path}: cannot read the image (") and "re-export it" in msg
    if kind == "empty":
        assert "the file is empty, 0 bytes" in msg


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_grey_and_rgb_images_mixed_in_one_folder_are_read_alike(tmp_path: Path, channels: int | None) -> None:
    """Not an error: every image is read with one channel count, ``data.channels`` or else that of
    the first training image: a grey file is repeated to RGB, an RGB file converted to grey."""
    root = tmp_path / "data"
    _folder(root, n=4)
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(root / "images" / "im1.png")  # grey among RGB
    extra = {"channels": channels} if channels else {}
    c = cfg(dataset="folder", root=str(root), image_size=[16, 16], num_classes=2, val_fraction=0.5, **extra)
    b = build_data(c)
    k = b.in_channels
    assert k == (channels or image_channels(b.train.source.pairs[0][0]))
    shapes = {tuple(ds[i]["image"].shape) for ds in (b.train, b.val) for i in range(len(ds))}
    assert shapes == {(k, 16, 16)}


@pytest.mark.parametrize("where", ["images", "masks"])
def test_a_symlink_loop_is_named(tmp_path: Path, where: str) -> None:
    root = tmp_path / "data"
    _folder(root, n=4)
    generators().broken_file(tmp_path, f"data/{where}/im2.png", "symlink-loop")
    with pytest.raises(DataError) as info:
        build_data(cfg(dataset="folder", root=str(root), num_classes=2))
    msg = one_line(info)
    assert msg.startswith(f"{root / where / 'im2.png'}: a symbolic link that leads to no file"), msg


# ----------------------------------------------------------------------------- COCO annotations
def coco(tmp_path: Path, task: str = "segmentation", **changes: Any) -> Any:
    generators().coco_dataset(tmp_path, **changes)
    c = cfg(
        dataset="coco",
        root=str(tmp_path / "data"),
        train_annotations="annotations/train.json",
        val_annotations="annotations/val.json",
        train_images="train",
        val_images="val",
        image_size=[24, 32],
    )
    return build_data(c, task=task)


BAD_ANNOTATIONS = {
    "rle_bigger": ({"segmentation": {"size": [48, 64], "counts": [3072]}}, "RLE size [48, 64] differs"),
    "rle_smaller": ({"segmentation": {"size": [12, 16], "counts": [192]}}, "RLE size [12, 16] differs"),
    "bbox_negative_width": ({"bbox": [10, 2, -8, 6]}, "negative width or height"),
    "bbox_negative_height": ({"bbox": [2, 8, 8, -6]}, "negative width or height"),
    "bbox_nan": ({"bbox": [2, float("nan"), 8, 6]}, "4 finite numbers"),
    "bbox_inf": ({"bbox": [2, 2, float("inf"), 6]}, "4 finite numbers"),
    "bbox_left_of_image": ({"bbox": [-3, 2, 8, 6]}, "reaches outside its 32x24 (WxH) image"),
    "bbox_below_image": ({"bbox": [2, 20, 8, 6]}, "reaches outside its 32x24 (WxH) image"),
    "polygon_nan": ({"segmentation": [[2, 2, float("nan"), 2, 10, 8]]}, "finite numbers"),
    "polygon_far_outside": (
        {"segmentation": [[2, 2, 1e8, 2, 10, 8]]},
        "polygon point (1e+08, 2) lies far outside its 32x24 (WxH) image",
    ),
    "polygon_odd": ({"segmentation": [[2, 2, 10, 2, 10]]}, "odd number of coordinates"),
    "area_string": ({"area": "big"}, "area must be a number"),
}


@pytest.mark.parametrize("task", ["segmentation", "instance"])
@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_bad_annotation_is_one_line_at_build_time_in_both_tasks(tmp_path: Path, case: str, task: str) -> None:
    """Before, the segmentation task rendered the JSON as samples loaded: an RLE bigger than its
    image was an IndexError in an epoch and a negative box passed. Now both tasks check every
    annotation when the dataset is built: the annotation id, its image, the file and the fix."""
    change, expected = BAD_ANNOTATIONS[case]
    with pytest.raises(DataError) as info:
        coco(tmp_path, task, val_annotation=change)
    msg = one_line(info)
    ann_file = tmp_path / "data" / "annotations" / "val.json"
    assert msg.startswith(f"{ann_file}: annotation 1 (image 001.png): ") and expected in msg, msg
    if case.startswith("rle"):
        assert "[24, 32]" in msg  # both sizes
    if case.startswith("bbox_negative") or (case.startswith("bbox_") and "outside" in expected):
        assert "drop the bbox" in msg


@pytest.mark.parametrize("task", ["segmentation", "instance"])
@pytest.mark.parametrize(
    "change, expected",
    [
        ({"val_annotation": {"category_id": 99}}, "fix its category_id or add the category"),
        ({"val_annotation": {"image_id": 9}}, "fix its image_id or add the image entry"),
        ({"val_image": {"height": 0}}, "height/width must be positive integers"),
    ],
    ids=["unknown_category", "unknown_image", "height_zero"],
)
def test_unknown_ids_and_bad_image_sizes_are_one_line(
    tmp_path: Path, task: str, change: dict, expected: str
) -> None:
    with pytest.raises(DataError) as info:
        coco(tmp_path, task, **change)
    assert expected in one_line(info)


def test_a_box_a_fraction_of_a_pixel_outside_is_accepted(tmp_path: Path) -> None:
    """COCO's float boxes can end a little past the border: up to one pixel is not an error."""
    b = coco(tmp_path, "instance", val_annotation={"bbox": [-0.5, 2, 32.9, 6]})
    assert len(b.val) == 2


@pytest.mark.parametrize("task", ["segmentation", "instance"])
def test_a_polygon_a_little_outside_is_clipped_as_before(tmp_path: Path, task: str) -> None:
    """Annotation tools leave points a few pixels outside the image: not an error (only points
    farther out than the image's own size are, which would make the rasteriser walk millions of
    pixels)."""
    b = coco(tmp_path, task, val_annotation={"segmentation": [[-3, 2, 40, 2, 40, 30, -3, 30]]})
    assert len(b.val) == 2


def test_zero_size_box_accepted_and_said_in_the_description(tmp_path: Path) -> None:
    """Policy: a zero-width or zero-height JSON bbox does not drop its object (training boxes come
    from the masks), but it is counted and the data line says so."""
    b = coco(tmp_path, "instance", val_annotation={"bbox": [2, 2, 0, 6]})
    assert b.info["objects"]["val"]["zero_size_bbox"] == 1
    assert b.val[0]["target"]["labels"].tolist() == [1, 2]
    assert "1 JSON boxes of zero width or height (training boxes come from the masks)" in b.describe()
    plain = coco(tmp_path / "plain", "instance")
    assert "zero_size_bbox" not in plain.info["objects"]["val"] and "zero width" not in plain.describe()


def test_segmentation_task_skips_short_polygons_and_says_so(tmp_path: Path) -> None:
    """As in the instance task: a polygon of fewer than 3 points is skipped (pycocotools would read
    a 2-point polygon as a box), counted, and named in the data line."""
    b = coco(tmp_path, val_annotation={"segmentation": [[2, 2, 10, 2]]})
    assert b.info["skipped"] == {
        "val": {"short_polygons": 1, "no_polygon": 1},
        "train": {"short_polygons": 0, "no_polygon": 0},
    }
    assert "skipped: 1 short polygons, 1 no polygon" in b.describe()
    mask = b.val.source.load(0)[1]
    assert set(np.unique(mask).tolist()) == {0, 2}  # only the RLE object (category 7 -> label 2) is drawn
    assert "skipped" not in coco(tmp_path / "plain").describe()


def test_segmentation_masks_unchanged_for_good_annotations(tmp_path: Path) -> None:
    """The rendering now goes through the checked RLE; for valid polygons, compressed and
    uncompressed RLE and crowd regions the masks equal pycocotools' annToMask as before."""
    from pycocotools import mask as mask_util

    generators().coco_dataset(tmp_path)
    ann_file = tmp_path / "data" / "annotations" / "val.json"
    doc = json.loads(ann_file.read_text())
    rle = mask_util.encode(
        np.asfortranarray((np.arange(24)[:, None] + np.arange(32)[None, :] > 40).astype(np.uint8))
    )
    doc["annotations"].append(
        {
            "id": 9,
            "image_id": 2,
            "category_id": 3,
            "iscrowd": 1,
            "segmentation": {"size": [24, 32], "counts": rle["counts"].decode()},
        }
    )
    ann_file.write_text(json.dumps(doc))
    b = build_data(
        cfg(
            dataset="coco",
            root=str(tmp_path / "data"),
            train_annotations="annotations/train.json",
            val_annotations="annotations/val.json",
            train_images="train",
            val_images="val",
            image_size=[24, 32],
        )
    )
    src = b.val.source
    for i in range(len(src)):
        got = src.load(i)[1]
        info = src.coco.imgs[src.image_ids[i]]
        want = np.zeros((24, 32), np.int64)
        anns = src.coco.imgToAnns[info["id"]]
        objects = sorted((a for a in anns if not a["iscrowd"]), key=lambda a: -float(a.get("area", 0.0)))
        for a in objects + [a for a in anns if a["iscrowd"]]:
            label = b.ignore_index if a["iscrowd"] else src.cat_to_label[a["category_id"]]
            want[src.coco.annToMask(a).astype(bool)] = label
        assert np.array_equal(got, want)
    assert (src.load(1)[1] == b.ignore_index).any()  # the crowd region

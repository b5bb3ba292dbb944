"""stitch.data, task ``instance``: COCO-style objects for Mask R-CNN, from tiny files in tmp_path."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import TypeAdapter

from stitch.config import DataCfg
from stitch.data import DataBundle, DataError, build_data
from stitch.data.coco_format import rle_string_total
from stitch.errors import StitchError

CFG = TypeAdapter(DataCfg)
HAS_STARDIST = importlib.util.find_spec("stardist") is not None
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
H, W = 24, 32


def cfg(**kw: Any) -> Any:
    return CFG.validate_python(kw)


def rle_of(mask: np.ndarray, compressed: bool = True) -> dict:
    """COCO RLE of a 0/1 mask: compressed (counts a string) or uncompressed (counts a list)."""
    from pycocotools import mask as mask_util

    if compressed:
        r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).ravel(order="F")  # column-major, starting with a run of zeros
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def box_mask(x0: int, y0: int, x1: int, y1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def ann(aid: int, image_id: int, cat: int, seg: Any, **kw: Any) -> dict:
    return {"id": aid, "image_id": image_id, "category_id": cat, "iscrowd": 0, "segmentation": seg, **kw}


def doc(
    anns: list[dict], cats: tuple[int, ...] = (3, 7, 42), images: int = 2, size: tuple[int, int] = (H, W)
) -> dict:
    return {
        "images": [
            {"id": i, "file_name": f"{i:03d}.png", "height": size[0], "width": size[1]}
            for i in range(1, images + 1)
        ],
        "annotations": anns,
        "categories": [{"id": c, "name": f"cat{c}"} for c in cats],
    }


def write_coco(root: Path, train: dict, val: dict | None = None, grey: bool = False) -> Path:
    """``root/{train,val}/<file_name>`` (random pixels, the JSON's sizes) +
    ``root/annotations/{train,val}.json``."""
    rng = np.random.default_rng(0)
    for split, d in (("train", train), ("val", val if val is not None else train)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for im in d["images"]:
            shape = (im["height"], im["width"]) if grey else (im["height"], im["width"], 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / split / im["file_name"])
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{split}.json").write_text(json.dumps(d))
    return root


def coco_cfg(root: Path, **kw: Any) -> Any:
    return cfg(
        dataset="coco",
        root=str(root),
        train_annotations="annotations/train.json",
        val_annotations="annotations/val.json",
        train_images="train",
        val_images="val",
        **kw,
    )


def build(root: Path, **kw: Any) -> DataBundle:
    return build_data(coco_cfg(root, **kw), task="instance")


def instance_error(c: Any, cache: Path | None = None) -> str:
    with pytest.raises(DataError) as info:
        build_data(c, cache, task="instance")
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, StitchError)
    return msg


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``[x0, y0, x1 + 1, y1 + 1]`` of each mask's pixels."""
    out = []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def quiet(fn: Callable, *a: Any) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*a)


def assert_round_trip(b: DataBundle) -> None:
    """Every val target, encoded with pycocotools, gives back coco_gt's non-crowd annotations."""
    from pycocotools import mask as mask_util

    gt = b.coco_gt
    assert sorted(gt.getImgIds()) == sorted(b.val[i]["target"]["image_id"] for i in range(len(b.val)))
    for i in range(len(b.val)):
        item = b.val[i]
        t = item["target"]
        info = gt.imgs[t["image_id"]]
        assert tuple(item["image"].shape) == (3, info["height"], info["width"])
        anns = [
            a
            for a in gt.loadAnns(gt.getAnnIds(imgIds=[t["image_id"]], iscrowd=False))
            if gt.annToMask(a).any()
        ]
        assert [b.label_to_category[int(k)] for k in t["labels"]] == [a["category_id"] for a in anns]
        rles = mask_util.encode(np.asfortranarray(t["masks"].numpy().transpose(1, 2, 0))) if len(anns) else []
        for a, rle in zip(anns, rles):
            assert np.array_equal(mask_util.decode(rle), gt.annToMask(a))
            assert float(mask_util.area(rle)) == pytest.approx(float(mask_util.area(gt.annToRLE(a))))


def coco_eval_segm_ap(b: DataBundle) -> float:
    """COCOeval (segm) of the val targets used as predictions with score 1: 1.0 if they match coco_gt."""
    from pycocotools import mask as mask_util
    from pycocotools.cocoeval import COCOeval

    results = []
    for i in range(len(b.val)):
        t = b.val[i]["target"]
        for m, lab in zip(t["masks"].numpy(), t["labels"].tolist()):
            r = mask_util.encode(np.asfortranarray(m))
            results.append(
                {
                    "image_id": t["image_id"],
                    "category_id": b.label_to_category[lab],
                    "score": 1.0,
                    "segmentation": {"size": r["size"], "counts": r["counts"].decode("ascii")},
                }
            )
    dt = quiet(b.coco_gt.loadRes, results)
    ev = COCOeval(b.coco_gt, dt, "segm")
    quiet(ev.evaluate)
    quiet(ev.accumulate)
    quiet(ev.summarize)
    return float(ev.stats[0])


# ----------------------------------------------------------------------------- categories and encodings
@pytest.mark.parametrize("cats", [(3, 7, 42), (42, 3, 7), (1,), (90, 2, 15, 11)])
def test_category_ids_survive_the_round_trip(tmp_path: Path, cats: tuple[int, ...]) -> None:
    anns = [ann(k + 1, 1, c, rle_of(box_mask(2 * k, k, 2 * k + 4, k + 5))) for k, c in enumerate(cats)]
    b = build(write_coco(tmp_path / "coco", doc(anns, cats)))
    ordered = sorted(cats)
    assert b.label_to_category == dict(enumerate(ordered, 1))
    assert b.num_classes == len(cats) + 1 and b.class_names == ["background"] + [f"cat{c}" for c in ordered]
    labels = b.val[0]["target"]["labels"].tolist()
    assert labels == [ordered.index(c) + 1 for c in cats]  # annotation order kept
    assert [b.label_to_category[k] for k in labels] == list(cats)
    assert sorted(b.coco_gt.getCatIds()) == ordered  # coco_gt keeps the original ids
    assert (
        b.mean == (0.0, 0.0, 0.0) and b.std == (1.0, 1.0, 1.0) and b.in_channels == 3 and b.task == "instance"
    )


@pytest.mark.parametrize("encoding", ["polygon", "two_polygons", "rle_compressed", "rle_uncompressed"])
def test_polygon_and_rle_segmentations_give_the_same_masks(tmp_path: Path, encoding: str) -> None:
    from pycocotools import mask as mask_util

    target = box_mask(4, 3, 14, 11) | box_mask(20, 15, 30, 22)
    seg = {
        "polygon": [[4, 3, 14, 3, 14, 11, 4, 11]],
        "two_polygons": [[4, 3, 14, 3, 14, 11, 4, 11], [20, 15, 30, 15, 30, 22, 20, 22]],
        "rle_compressed": rle_of(target),
        "rle_uncompressed": rle_of(target, compressed=False),
    }[encoding]
    b = build(write_coco(tmp_path / "coco", doc([ann(1, 1, 7, seg)])))
    t = b.val[0]["target"]
    expected = (
        mask_util.decode(mask_util.merge(mask_util.frPyObjects(seg, H, W)))
        if isinstance(seg, list)
        else target
    )
    if encoding == "polygon":
        expected = box_mask(4, 3, 14, 11)
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (1, H, W)
    assert np.array_equal(t["masks"][0].numpy(), expected)
    assert torch.equal(t["boxes"], tight_boxes(t["masks"])) and t["boxes"].dtype == torch.float32
    assert t["labels"].tolist() == [2] and t["labels"].dtype == torch.int64
    assert b.info["skipped"]["val"] == {"short_polygons": 0, "no_polygon": 0, "degenerate": 0}


def test_rle_string_total_matches_pycocotools() -> None:
    rng = np.random.default_rng(1)
    for shape in ((5, 7), (40, 33), (1, 1)):
        for _ in range(5):
            m = (rng.random(shape) < rng.random()).astype(np.uint8)
            assert rle_string_total(rle_of(m)["counts"]) == m.size
    assert rle_string_total("") == 0
    # bad char; unfinished number
    assert rle_string_total("\x01bad") is None and rle_string_total("o") is None


def test_crowd_regions_left_out_of_targets_but_kept_in_coco_gt(tmp_path: Path) -> None:
    crowd = ann(2, 1, 3, rle_of(box_mask(16, 10, 30, 20), compressed=False), iscrowd=1)
    anns = [ann(1, 1, 7, [[2, 2, 10, 2, 10, 8, 2, 8]]), crowd]
    b = build(write_coco(tmp_path / "coco", doc(anns)))
    for ds in (b.train, b.val):
        assert ds[0]["target"]["labels"].tolist() == [2]
    assert [a["id"] for a in b.coco_gt.loadAnns(b.coco_gt.getAnnIds(iscrowd=True))] == [2]
    assert b.info["objects"]["val"] == {"objects": 1, "crowd": 1, "empty_images": 1}
    assert "2 crowd regions" in b.describe()  # one per split
    assert_round_trip(b)
    assert coco_eval_segm_ap(b) == pytest.approx(1.0)


def test_images_without_annotations_give_empty_targets(tmp_path: Path) -> None:
    b = build(
        write_coco(tmp_path / "coco", doc([ann(1, 1, 3, [[2, 2, 10, 2, 10, 8, 2, 8]])], images=3)),
        augment={"rotate90": True, "vflip": True, "color_jitter": 0.2},
    )
    assert (len(b.train), len(b.val)) == (3, 3)
    for ds in (b.train, b.val):
        for i in (1, 2):
            torch.manual_seed(i)
            item = ds[i]
            t = item["target"]
            h, w = item["image"].shape[1:]
            assert t["boxes"].shape == (0, 4) and t["boxes"].dtype == torch.float32
            assert t["labels"].shape == (0,) and t["labels"].dtype == torch.int64
            assert t["masks"].shape == (0, h, w) and t["masks"].dtype == torch.uint8
    assert b.info["objects"]["train"]["empty_images"] == 2


# ----------------------------------------------------------------------------- skipped and counted
@pytest.mark.parametrize(
    "bad",
    [
        {"segmentation": rle_of(np.zeros((H, W), np.uint8))},  # empty RLE mask
        {"segmentation": rle_of(np.zeros((H, W), np.uint8), compressed=False)},
        {"segmentation": [[2, 2, 2, 2, 2, 2]]},  # a polygon of three equal points: rasterises to nothing
    ],
    ids=["empty_rle", "empty_uncompressed_rle", "point_polygon"],
)
def test_degenerate_objects_not_trained_on_but_kept_as_ground_truth(tmp_path: Path, bad: dict) -> None:
    anns = [ann(1, 1, 3, [[12, 12, 20, 12, 20, 20, 12, 20]]), {**ann(2, 1, 7, None), **bad}]
    b = build(write_coco(tmp_path / "coco", doc(anns)))
    for split, ds in (("train", b.train), ("val", b.val)):
        assert b.info["skipped"][split]["degenerate"] == 1
        assert ds[0]["target"]["labels"].tolist() == [1]
    assert sorted(b.coco_gt.getAnnIds()) == [1, 2]  # the official ground truth keeps it
    assert "2 degenerate" in b.describe()


@pytest.mark.parametrize("bbox", [[2, 2, 0.5, 6], [2, 2, 8, 0.0]], ids=["thin_bbox", "flat_bbox"])
def test_a_wrong_json_bbox_does_not_drop_a_good_mask(tmp_path: Path, bbox: list) -> None:
    anns = [{**ann(1, 1, 3, [[2, 2, 10, 2, 10, 8, 2, 8]]), "bbox": bbox}]
    b = build(write_coco(tmp_path / "coco", doc(anns)))
    t = b.val[0]["target"]
    assert t["labels"].tolist() == [1] and b.info["skipped"]["val"]["degenerate"] == 0
    x0, y0, x1, y1 = t["boxes"][0].tolist()
    assert x1 - x0 >= 8 and y1 - y0 >= 6  # the box comes from the mask, not from the JSON


def test_short_polygons_skipped_and_counted_and_coco_gt_stays_evaluable(tmp_path: Path) -> None:
    good = [2, 2, 10, 2, 10, 8, 2, 8]
    anns = [
        ann(1, 1, 3, [good, [15, 15, 16, 16]]),  # one polygon of 2 points: that polygon skipped
        ann(2, 1, 7, [[20, 4], [22, 5, 23, 6]]),  # nothing usable: the annotation is dropped
        ann(3, 2, 42, [[1, 1, 9, 1, 9, 9]], iscrowd=0),
    ]
    b = build(write_coco(tmp_path / "coco", doc(anns)))
    assert b.info["skipped"]["val"] == {"short_polygons": 3, "no_polygon": 1, "degenerate": 0}
    assert sorted(b.coco_gt.getAnnIds()) == [1, 3]
    assert b.coco_gt.anns[1]["segmentation"] == [good]
    assert b.val[0]["target"]["labels"].tolist() == [1]
    assert "6 short polygons" in b.describe() and "2 no polygon" in b.describe()
    assert_round_trip(b)
    assert coco_eval_segm_ap(b) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- one-line errors at build time
def _drop_image_file(root: Path, d: dict) -> str:
    (root / "val" / "002.png").unlink()
    return "002.png"


BAD: dict[str, tuple[Callable[[dict], Any], str]] = {
    "unknown_category": (lambda d: d["annotations"][0].update(category_id=99), "category_id 99"),
    "unknown_image": (lambda d: d["annotations"][0].update(image_id=9), "image_id 9"),
    "segmentation_string": (
        lambda d: d["annotations"][0].update(segmentation="M 1 2"),
        "segmentation must be",
    ),
    "segmentation_list_of_numbers": (
        lambda d: d["annotations"][0].update(segmentation=[1, 2, 3, 4, 5, 6]),
        "not of polygons",
    ),
    "polygon_strings": (
        lambda d: d["annotations"][0].update(segmentation=[["1", "2", "3", "4", "5", "6"]]),
        "not of polygons",
    ),
    "polygon_odd": (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5, 6, 7]]), "odd number"),
    "rle_size": (lambda d: d["annotations"][1]["segmentation"].update(size=[H, W + 1]), "RLE size"),
    "rle_counts_sum": (
        lambda d: d["annotations"][1]["segmentation"].update(counts=[5, 3]),
        "uncompressed RLE counts",
    ),
    "rle_counts_type": (
        lambda d: d["annotations"][1]["segmentation"].update(counts=3.5),
        "RLE counts must be",
    ),
    "rle_string_overrun": (
        lambda d: d["annotations"][1]["segmentation"].update(counts="0Q8`1"),
        "compressed RLE",
    ),
    "bbox_length": (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "bbox must be"),
    "bbox_type": (lambda d: d["annotations"][0].update(bbox="1,2,3,4"), "bbox must be"),
    "area_type": (lambda d: d["annotations"][0].update(area="big"), "area must be"),
    "iscrowd_value": (lambda d: d["annotations"][0].update(iscrowd=2), "iscrowd"),
    "annotation_id_zero": (lambda d: d["annotations"][0].update(id=0), "positive integers"),
    "annotation_id_twice": (lambda d: d["annotations"][1].update(id=1), "twice"),
    "image_size_type": (lambda d: d["images"][0].update(height="24"), "height/width"),
    "missing_key": (lambda d: d["annotations"][0].pop("segmentation"), "lacks"),
    "category_id_list": (
        lambda d: d["annotations"][0].update(category_id=[3]),
        "category_id [3] is not an integer",
    ),
    "category_entry": (lambda d: d["categories"].append({"name": "x"}), "category entry"),
    "category_twice": (lambda d: d["categories"].append({"id": 3, "name": "again"}), "twice"),
}


@pytest.mark.parametrize("case", [*sorted(BAD), "missing_image_file"])
def test_bad_annotations_fail_with_one_line_at_build_time(tmp_path: Path, case: str) -> None:
    good = doc(
        [
            ann(1, 1, 3, [[2, 2, 10, 2, 10, 8, 2, 8]]),
            ann(2, 2, 7, rle_of(box_mask(1, 1, 5, 5), compressed=False)),
        ]
    )
    bad = copy.deepcopy(good)
    root = write_coco(tmp_path / "coco", good)
    if case == "missing_image_file":
        expected = _drop_image_file(root, bad)
    else:
        mutate, expected = BAD[case]
        mutate(bad)
        (root / "annotations" / "val.json").write_text(json.dumps(bad))
    msg = instance_error(coco_cfg(root))  # build_data only: no item is loaded
    assert "val" in msg and expected in msg, msg
    if case == "missing_image_file":
        assert "missing" in msg and "restore it" in msg


@pytest.mark.parametrize("dataset", ["folder", "brain"])
def test_instance_task_refused_for_datasets_without_instances(tmp_path: Path, dataset: str) -> None:
    c = cfg(dataset=dataset, root=str(tmp_path)) if dataset == "folder" else cfg(dataset=dataset)
    msg = instance_error(c, tmp_path)
    assert dataset in msg and "coco, voc, nuclei, shapes" in msg
    assert list(tmp_path.iterdir()) == []  # nothing prepared


def test_segmentation_bundle_has_no_instance_fields(tmp_path: Path) -> None:
    b = build_data(cfg(dataset="shapes", num_images=4, image_size=32), tmp_path)
    assert (b.task, b.collate_fn, b.coco_gt, b.label_to_category) == ("segmentation", None, None, {})
    with pytest.raises(DataError, match="unknown task"):
        build_data(cfg(dataset="shapes", num_images=4, image_size=32), tmp_path, task="detection")


# ----------------------------------------------------------------------------- items, augmentation, collate
AUGMENTS = {
    "hflip": {"hflip": True},
    "vflip": {"hflip": False, "vflip": True},
    "rotate90": {"hflip": False, "rotate90": True},
    "all": {"hflip": True, "vflip": True, "rotate90": True, "color_jitter": 0.3},
}


@pytest.mark.parametrize("augment", sorted(AUGMENTS))
def test_augmentation_keeps_boxes_on_the_masks(tmp_path: Path, augment: str) -> None:
    anns = [
        ann(1, 1, 3, [[3, 2, 12, 2, 12, 9, 3, 9]]),
        ann(2, 1, 7, rle_of(box_mask(14, 6, 31, 23))),
        ann(3, 1, 42, [[20, 1, 28, 3, 24, 5]]),
        ann(4, 1, 3, rle_of(box_mask(0, 20, 2, 24))),
    ]
    b = build(write_coco(tmp_path / "coco", doc(anns, images=1)), augment=AUGMENTS[augment])
    val = b.val[0]["target"]
    shapes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        item = b.train[0]
        t, img = item["target"], item["image"]
        shapes.add(tuple(img.shape))
        assert img.dtype == torch.float32 and float(img.min()) >= 0.0 and float(img.max()) <= 1.0
        assert t["masks"].shape[1:] == img.shape[1:] and t["masks"].dtype == torch.uint8
        assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"]) >= 1
        assert (t["masks"].flatten(1).sum(1) > 0).all()
        # exact geometry: same objects, same pixel counts
        assert t["labels"].tolist() == val["labels"].tolist()
        assert t["masks"].flatten(1).sum(1).tolist() == val["masks"].flatten(1).sum(1).tolist()
        assert torch.equal(t["boxes"], tight_boxes(t["masks"]))
    if augment in ("rotate90", "all"):
        assert shapes == {(3, H, W), (3, W, H)}


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", ["none", "h", "v"])
def test_box_transforms_move_boxes_with_the_mask_before_boxes_are_refit(k: int, flip: str) -> None:
    """rot90_boxes and the v2 flips on BoundingBoxes alone (InstanceDataset later refits boxes to
    the masks, so this is the only check of the box geometry itself)."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as TF

    from stitch.data.transforms import rot90_boxes

    mask = torch.zeros(1, H, W, dtype=torch.uint8)
    mask[0, 3:9, 5:17] = 1
    boxes = tv_tensors.BoundingBoxes(tight_boxes(mask), format="XYXY", canvas_size=(H, W))
    m = tv_tensors.Mask(mask)
    if flip == "h":
        boxes, m = TF.horizontal_flip(boxes), TF.horizontal_flip(m)
    elif flip == "v":
        boxes, m = TF.vertical_flip(boxes), TF.vertical_flip(m)
    rotated_mask = torch.rot90(m, k, dims=(-2, -1))
    rotated = rot90_boxes(boxes, k)
    assert torch.equal(rotated.as_subclass(torch.Tensor), tight_boxes(rotated_mask))
    assert tuple(rotated.canvas_size) == tuple(rotated_mask.shape[-2:])


def test_val_items_native_size_deterministic_not_normalised(tmp_path: Path) -> None:
    d = doc([ann(1, 1, 3, [[2, 2, 10, 2, 10, 8, 2, 8]]), ann(2, 2, 7, [[1, 1, 6, 1, 6, 6]])])
    d["images"][1].update(height=41, width=23)
    root = write_coco(tmp_path / "coco", d, grey=True)
    b = build(
        root,
        image_size=64,
        augment={"rotate90": True, "vflip": True, "color_jitter": 0.5},
        normalize="imagenet",
    )
    assert tuple(b.val[0]["image"].shape) == (3, H, W) and tuple(b.val[1]["image"].shape) == (3, 41, 23)
    torch.manual_seed(0)
    a = b.val[1]
    torch.manual_seed(1)
    c = b.val[1]
    assert torch.equal(a["image"], c["image"]) and all(
        torch.equal(a["target"][k], c["target"][k]) for k in ("boxes", "labels", "masks")
    )
    pixels = np.asarray(Image.open(root / "val" / "002.png"), dtype=np.float32) / 255.0
    for ch in range(3):  # grey repeated to RGB, [0, 1], no mean/std
        assert torch.allclose(a["image"][ch], torch.from_numpy(pixels))
    assert a["target"]["image_id"] == 2 and a["index"] == 1 and b.val.name(1) == "002"


def test_collate_keeps_lists_for_dataloader(tmp_path: Path) -> None:
    d = doc([ann(1, 1, 3, [[2, 2, 10, 2, 10, 8, 2, 8]])], images=3)
    d["images"][2].update(height=17, width=29)
    b = build(write_coco(tmp_path / "coco", d))
    batches = list(torch.utils.data.DataLoader(b.val, batch_size=2, collate_fn=b.collate_fn))
    assert [len(x["images"]) for x in batches] == [2, 1]
    first, last = batches
    assert set(first) == {"images", "targets", "index"} and first["index"] == [0, 1] and last["index"] == [2]
    assert [tuple(x.shape) for x in first["images"] + last["images"]] == [(3, H, W), (3, H, W), (3, 17, 29)]
    assert [t["image_id"] for t in first["targets"]] == [1, 2] and first["targets"][0]["boxes"].shape == (
        1,
        4,
    )
    torch.manual_seed(0)
    train = next(
        iter(torch.utils.data.DataLoader(b.train, batch_size=3, shuffle=True, collate_fn=b.collate_fn))
    )
    assert sorted(train["index"]) == [0, 1, 2] and isinstance(train["targets"], list)


# ----------------------------------------------------------------------------- the datasets
def write_voc(tmp_path: Path) -> Path:
    """Three VOC images: two objects per image (a person with a 255 border, a dog whose class
    pixels are mostly dog), plus one object with no class pixels in image 3 (skipped)."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    palette = [0, 0, 0] + [v for k in range(1, 255) for v in (k, 255 - k, 7 * k % 256)] + [224, 224, 192]
    stems = ["2007_000001", "2007_000002", "2007_000003"]
    for n, stem in enumerate(stems):
        rng = np.random.default_rng(n)
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
            _mk(root / "JPEGImages") / f"{stem}.jpg"
        )
        obj, cls = np.zeros((30, 40), np.uint8), np.zeros((30, 40), np.uint8)
        obj[5:15, 5:20], cls[5:15, 5:20] = 1, 15  # person
        obj[4, 4:21], cls[4, 4:21] = 255, 255  # void border
        obj[18:28, 22:38], cls[18:28, 22:38] = 2, 12  # dog ...
        cls[18:20, 22:38] = 8  # ... with a few cat pixels: majority wins
        if n == 2:
            obj[0:3, 30:40] = 3  # an object without class pixels
        for folder, arr in (("SegmentationObject", obj), ("SegmentationClass", cls)):
            im = Image.fromarray(arr, "P")
            im.putpalette(palette)
            im.save(_mk(root / folder) / f"{stem}.png")
    sets = _mk(root / "ImageSets" / "Segmentation")
    (sets / "train.txt").write_text("2007_000001\n2007_000002\n")
    (sets / "val.txt").write_text("2007_000003\n")
    return root


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_voc_instances_from_object_and_class_pngs(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    b = build_data(cfg(dataset="voc", root=str(tmp_path / "VOCdevkit")), task="instance")
    assert (len(b.train), len(b.val), b.num_classes) == (2, 1, 21)
    assert b.class_names[15] == "person" and b.label_to_category == {k: k for k in range(1, 21)}
    assert [c["name"] for c in b.coco_gt.loadCats(b.coco_gt.getCatIds())] == b.class_names[1:]
    t = b.val[0]["target"]
    assert t["labels"].tolist() == [15, 12]
    assert t["boxes"].tolist() == [[5, 5, 20, 15], [22, 18, 38, 28]]
    assert [int(m.sum()) for m in t["masks"]] == [150, 160]  # the 255 border belongs to no object
    assert b.info["skipped"]["val"]["no_class"] == 1 and b.info["skipped"]["train"]["no_class"] == 0
    assert "1 no class" in b.describe()
    assert_round_trip(b)
    (root / "SegmentationObject" / "2007_000002.png").unlink()
    assert (
        "2007_000002.png" in (msg := instance_error(cfg(dataset="voc", root=str(root)))) and "missing" in msg
    )
    msg = instance_error(cfg(dataset="voc", root=str(root), objects="Nope"))
    assert "Nope" in msg and "data.objects" in msg


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_shapes_instances_deterministic_with_disjoint_occluded_masks(tmp_path: Path) -> None:
    from stitch.data.shapes import INSTANCE_COUNT, render_objects

    c = cfg(dataset="shapes", num_images=16, image_size=48, num_classes=4, seed=5)
    a, b = build_data(c, tmp_path / "a", task="instance"), build_data(c, tmp_path / "b", task="instance")
    ra = Path(a.info["root"])
    assert ra.name.startswith("shapes-instances-") and digest(ra) == digest(Path(b.info["root"]))
    assert (len(a.train), len(a.val), len(a.test), a.num_classes) == (8, 4, 4, 4) and a.class_names == [
        "background",
        "circle",
        "square",
        "triangle",
    ]
    assert build_data(c, tmp_path / "a").info["root"] != str(ra)  # the semantic set lives elsewhere
    occluded = 0
    for i in range(len(a.val)):
        t = a.val[i]["target"]
        assert len(t["labels"]) >= 1 and int(t["masks"].sum(0).max()) <= 1  # disjoint
        drawn = render_objects(8 + i, 5, (48, 48), 4, INSTANCE_COUNT)[1]  # val: images 8-11
        occluded += sum(int(r.sum()) for _, r in drawn) - int(t["masks"].sum())
        assert len(drawn) >= 2
    assert occluded > 0  # some objects overlap, and the later one wins
    assert_round_trip(a)


@pytest.mark.skipif(
    not HAS_STARDIST, reason="stardist wheel not installed (pip install --no-deps stardist==0.9.2)"
)
def test_nuclei_instance_bundle_matches_its_json(tmp_path: Path) -> None:
    b = build_data(cfg(dataset="nuclei", augment={"hflip": False}), tmp_path, task="instance")
    root = Path(b.info["root"])
    assert (len(b.train), len(b.val), len(b.test), b.num_classes, b.class_names, b.label_to_category) == (
        21,
        4,
        4,
        2,
        ["background", "nucleus"],
        {1: 1},
    )
    assert sorted(b.coco_gt_test.imgs) == sorted(
        d["image_id"] for d in (b.test[i]["target"] for i in range(len(b.test)))
    )
    for split, ds in (("train", b.train), ("val", b.val), ("test", b.test)):
        data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        areas: dict[int, list[float]] = {}
        for a in data["annotations"]:
            areas.setdefault(a["image_id"], []).append(a["area"])
        for i in range(0, len(ds), 3 if split == "train" else 1):
            item = ds[i]
            t = item["target"]
            assert item["image"].shape == (3, 128, 128) and torch.equal(item["image"][0], item["image"][2])
            assert t["masks"].flatten(1).sum(1).tolist() == areas.get(t["image_id"], [])
    assert_round_trip(b)


def test_collated_batch_feeds_torchvision_mask_rcnn(tmp_path: Path) -> None:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    b = build_data(
        cfg(
            dataset="shapes",
            num_images=4,
            image_size=48,
            num_classes=3,
            augment={"rotate90": True, "vflip": True},
        ),
        tmp_path,
        task="instance",
    )
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=b.num_classes,
        min_size=64,
        max_size=64,
        image_mean=list(b.mean),
        image_std=list(b.std),
    )
    batch = b.collate_fn([b.train[0], b.train[1]])
    losses = model(batch["images"], batch["targets"])
    assert {"loss_classifier", "loss_box_reg", "loss_mask"} <= set(losses) and all(
        torch.isfinite(v) for v in losses.values()
    )
    model.eval()
    with torch.no_grad():
        (pred,) = model([b.val[0]["image"]])
    assert pred["masks"].shape[-2:] == (48, 48)  # predictions come back at the (native) input size

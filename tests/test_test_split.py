"""The held-out test split of shapes, folder, coco, voc and brain: three disjoint splits of the
documented sizes, seeded draws that reproduce, one-line errors for empty or shared splits, and run
ids of experiments without a test split unchanged."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import TypeAdapter

from stitch.config import DataCfg, parse_experiment
from stitch.data import DataBundle, DataError, build_data
from stitch.data.common import hold_out
from stitch.errors import ConfigError, StitchError

CFG = TypeAdapter(DataCfg)
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def cfg(**kw: Any) -> Any:
    return CFG.validate_python(kw)


def names(ds: Any) -> list[str]:
    return [ds.name(i) for i in range(len(ds))]


def splits_of(b: DataBundle) -> dict[str, list[str]]:
    out = {"train": names(b.train), "val": names(b.val)}
    if b.test is not None:
        out["test"] = names(b.test)
    return out


def assert_disjoint(splits: dict[str, list[str]], every: set[str] | None = None) -> None:
    """No sample in two splits; with ``every``, the splits together are exactly ``every``."""
    seen: list[str] = [n for ns in splits.values() for n in ns]
    assert len(seen) == len(set(seen)), splits
    if every is not None:
        assert set(seen) == every


def data_error(c: Any, cache: Path | None = None, task: str = "segmentation") -> str:
    with pytest.raises(DataError) as info:
        build_data(c, cache, task=task)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, StitchError)
    return msg


def config_error(data_yaml: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_experiment(f"name: x\ntask: segmentation\nbaseline: {{model: unet}}\ndata: {data_yaml}\n")
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)
    return path


# ----------------------------------------------------------------------------- the helper
def test_hold_out_is_seeded_sized_and_keeps_order() -> None:
    stems = [f"s{i:02d}" for i in range(20)]
    kept, held = hold_out(stems, 0.25, 7)
    assert len(held) == 5 and len(kept) == 15 and sorted(kept + held) == stems
    assert kept == sorted(kept) and held == sorted(held)  # original order kept
    assert hold_out(stems, 0.25, 7) == (kept, held) and hold_out(stems, 0.25, 8) != (kept, held)
    assert len(hold_out(stems, 0.001, 0)[1]) == 1  # at least one held
    assert len(hold_out(stems[:2], 0.9, 0)[0]) == 1  # at least one kept
    with pytest.raises(DataError) as info:
        hold_out(["only"], 0.5, 0, "data.test_fraction", "here")
    assert "\n" not in str(info.value) and "data.test_fraction" in str(info.value)


# ----------------------------------------------------------------------------- shapes
def test_shapes_test_split_is_the_last_images(tmp_path: Path) -> None:
    b = build_data(cfg(dataset="shapes", num_images=12, image_size=32), tmp_path)
    s = splits_of(b)
    assert [len(v) for v in s.values()] == [6, 3, 3]
    assert s["test"] == ["00009", "00010", "00011"] and s["val"] == ["00006", "00007", "00008"]
    assert_disjoint(s, {f"{i:05d}" for i in range(12)})
    assert b.info["split"] == "images 0..5 train, 6..8 val, 9..11 test" and b.info["test"] == 3
    assert "6 train / 3 val / 3 test" in b.describe()
    assert b.test[0]["image"].shape == (3, 32, 32)
    two = build_data(cfg(dataset="shapes", num_images=12, image_size=32, test_fraction=0), tmp_path)
    assert b.test is not None and two.test is None and (len(two.train), len(two.val)) == (9, 3)
    assert two.info["root"] == b.info["root"]  # the files do not depend on the split
    three = build_data(cfg(dataset="shapes", num_images=3, image_size=32), tmp_path)
    assert (len(three.train), len(three.val), len(three.test)) == (1, 1, 1)


def test_shapes_too_few_images_for_three_splits_is_a_config_error() -> None:
    msg = config_error("{dataset: shapes, num_images: 2}")
    assert "test_fraction" in msg and "num_images 2" in msg
    config_error("{dataset: shapes, num_images: 4, test_fraction: 0.75}")
    parse_experiment(
        "name: x\ntask: segmentation\nbaseline: {model: unet}\n"
        "data: {dataset: shapes, num_images: 2, test_fraction: 0}\n"
    )


def test_shapes_instances_have_a_test_split_and_its_coco_gt(tmp_path: Path) -> None:
    b = build_data(cfg(dataset="shapes", num_images=8, image_size=32), tmp_path, task="instance")
    assert (len(b.train), len(b.val), len(b.test)) == (4, 2, 2)
    test_ids = sorted(b.coco_gt_test.getImgIds())
    assert test_ids == [7, 8] and sorted(b.coco_gt.getImgIds()) == [5, 6]  # image id = index + 1
    assert [b.test[i]["target"]["image_id"] for i in range(2)] == test_ids
    assert b.coco_gt_test.getAnnIds() and not set(b.coco_gt_test.getAnnIds()) & set(b.coco_gt.getAnnIds())
    assert b.split_view("test").val is b.test and b.split_view("test").coco_gt is b.coco_gt_test
    assert "test objects" in b.describe()
    root = Path(b.info["root"])
    assert root.name.endswith("-v2") and (root / "annotations" / "instances.json").is_file()
    two = build_data(
        cfg(dataset="shapes", num_images=8, image_size=32, test_fraction=0), tmp_path, "instance"
    )
    assert two.test is None and two.coco_gt_test is None and (len(two.train), len(two.val)) == (6, 2)


# ----------------------------------------------------------------------------- folder
def folder_root(tmp_path: Path, n: int = 10) -> Path:
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for i in range(n):
        write_png(root / "images" / f"s{i}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
        write_png(
            root / "masks" / f"s{i}.png", (np.arange(16)[None, :] * 3 // 16).repeat(16, 0).astype(np.uint8)
        )
    return root


def write_list(root: Path, name: str, stems: list[str]) -> str:
    (root / name).write_text("".join(f"{s}\n" for s in stems))
    return name


def test_folder_test_fraction_is_drawn_first_and_seeded(tmp_path: Path) -> None:
    root = folder_root(tmp_path)
    every = {f"s{i}" for i in range(10)}
    b = build_data(cfg(dataset="folder", root=str(root), test_fraction=0.2))
    s = splits_of(b)
    assert [len(v) for v in s.values()] == [6, 2, 2]  # 2 test, then round(8 * 0.2) = 2 val
    assert_disjoint(s, every)
    assert splits_of(build_data(cfg(dataset="folder", root=str(root), test_fraction=0.2))) == s
    other = splits_of(build_data(cfg(dataset="folder", root=str(root), test_fraction=0.2, split_seed=1)))
    assert other != s
    assert_disjoint(other, every)
    assert "test_fraction 0.2" in b.info["split"] and b.info["test"] == 2
    # unset: the split of before (val drawn from every pair with split_seed), no test split
    plain = build_data(cfg(dataset="folder", root=str(root)))
    order = np.random.default_rng(0).permutation(10)[:2]
    assert plain.test is None and names(plain.val) == [f"s{i}" for i in sorted(order)]


def test_folder_test_list_with_each_combination_of_lists(tmp_path: Path) -> None:
    root = folder_root(tmp_path)
    every = {f"s{i}" for i in range(10)}
    test = write_list(root, "test.txt", ["s8", "s9"])
    tr = write_list(root, "train.txt", ["s0", "s1", "s2", "s3", "s4"])
    va = write_list(root, "val.txt", ["s5", "s6"])
    # both lists: pairs in no list (s7) are unused
    s = splits_of(
        build_data(cfg(dataset="folder", root=str(root), train_list=tr, val_list=va, test_list=test))
    )
    assert s == {"train": ["s0", "s1", "s2", "s3", "s4"], "val": ["s5", "s6"], "test": ["s8", "s9"]}
    # only train_list: val is every pair in neither train_list nor test_list
    s = splits_of(build_data(cfg(dataset="folder", root=str(root), train_list=tr, test_list=test)))
    assert s["val"] == ["s5", "s6", "s7"] and s["test"] == ["s8", "s9"]
    assert_disjoint(s, every)
    # only val_list: train is the rest
    s = splits_of(build_data(cfg(dataset="folder", root=str(root), val_list=va, test_list=test)))
    assert s["train"] == ["s0", "s1", "s2", "s3", "s4", "s7"]
    assert_disjoint(s, every)
    # no train/val list: val_fraction of the pairs left
    b = build_data(cfg(dataset="folder", root=str(root), test_list=test, val_fraction=0.25))
    s = splits_of(b)
    assert s["test"] == ["s8", "s9"] and len(s["val"]) == 2 and len(s["train"]) == 6
    assert_disjoint(s, every)
    assert "test list test.txt" in b.info["split"]


def test_folder_shared_or_empty_splits_are_one_line_errors(tmp_path: Path) -> None:
    root = folder_root(tmp_path, n=4)
    test = write_list(root, "test.txt", ["s0", "s3"])
    tr = write_list(root, "train.txt", ["s0", "s1"])
    msg = data_error(cfg(dataset="folder", root=str(root), train_list=tr, test_list=test))
    assert "'s0'" in msg and "train_list" in msg and "test_list" in msg and "test.txt" in msg
    va = write_list(root, "val.txt", ["s3"])
    msg = data_error(cfg(dataset="folder", root=str(root), val_list=va, test_list=test))
    assert "'s3'" in msg and "val_list" in msg and "test_list" in msg
    # val_list + test_list cover every pair: no train
    write_list(root, "val.txt", ["s1", "s2"])
    msg = data_error(cfg(dataset="folder", root=str(root), val_list=va, test_list=test))
    assert "train split is empty" in msg and "test_list" in msg
    write_list(root, "test.txt", [])
    assert "test split is empty" in data_error(cfg(dataset="folder", root=str(root), test_list=test))
    write_list(root, "test.txt", ["s0", "s1", "s2"])
    msg = data_error(cfg(dataset="folder", root=str(root), test_list=test))
    assert "only 1 image/mask pair" in msg and "after the test split" in msg
    one = folder_root(tmp_path / "one", n=1)
    assert "data.test_fraction" in data_error(cfg(dataset="folder", root=str(one), test_fraction=0.5))
    assert "not both" in config_error(
        f"{{dataset: folder, root: {root}, test_list: t.txt, test_fraction: 0.2}}"
    )
    msg = config_error(f"{{dataset: folder, root: {root}, train_list: t.txt, test_fraction: 0.2}}")
    assert "test_list" in msg


# ----------------------------------------------------------------------------- coco
def coco_doc(n: int, first_id: int = 1) -> dict:
    ids = range(first_id, first_id + n)
    return {
        "images": [{"id": i, "file_name": f"{i:03d}.png", "height": 16, "width": 24} for i in ids],
        "annotations": [
            {
                "id": i,
                "image_id": i,
                "category_id": 5,
                "iscrowd": 0,
                "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]],
                "area": 80.0,
                "bbox": [2, 2, 10, 8],
            }
            for i in ids
        ],
        "categories": [{"id": 5, "name": "thing"}],
    }


def coco_root(tmp_path: Path) -> Path:
    """``train`` (6 images), ``val`` (2) and ``test`` (2) folders with their JSON files."""
    root = tmp_path / "coco"
    for split, n, first in (("train", 6, 1), ("val", 2, 101), ("test", 2, 201)):
        d = coco_doc(n, first)
        for im in d["images"]:
            write_png(root / split / im["file_name"], np.full((16, 24, 3), 90, np.uint8))
        (root / "annotations").mkdir(parents=True, exist_ok=True)
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
        image_size=[16, 24],
        **kw,
    )


@pytest.mark.parametrize("task", ["segmentation", "instance"])
def test_coco_test_fraction_leaves_train(tmp_path: Path, task: str) -> None:
    root = coco_root(tmp_path)
    b = build_data(coco_cfg(root, test_fraction=0.34), task=task)
    s = splits_of(b)
    assert [len(v) for v in s.values()] == [4, 2, 2]  # round(6 * 0.34) = 2 of the train images
    assert_disjoint(s, {f"{i:03d}" for i in (*range(1, 7), 101, 102)})
    assert set(s["test"]) < {f"{i:03d}" for i in range(1, 7)}
    again = build_data(coco_cfg(root, test_fraction=0.34), task=task)
    assert splits_of(again) == s  # a fixed seed
    assert "test: 0.34 of the train images" in b.info["split"]
    if task == "instance":
        assert sorted(b.coco_gt_test.getImgIds()) == sorted(int(n) for n in s["test"])
        assert sorted(b.coco_gt.getImgIds()) == [101, 102]
    else:
        assert b.test[0]["mask"].shape == (16, 24) and int((b.test[0]["mask"] == 1).sum()) > 0


@pytest.mark.parametrize("task", ["segmentation", "instance"])
def test_coco_given_test_file_and_its_overlap_check(tmp_path: Path, task: str) -> None:
    root = coco_root(tmp_path)
    b = build_data(coco_cfg(root, test_annotations="annotations/test.json", test_images="test"), task=task)
    assert splits_of(b)["test"] == ["201", "202"] and (len(b.train), len(b.val)) == (6, 2)
    if task == "instance":
        assert sorted(b.coco_gt_test.getImgIds()) == [201, 202]
    msg = data_error(
        coco_cfg(root, test_annotations="annotations/train.json", test_images="train"), task=task
    )
    assert "001.png" in msg and "train and the test split" in msg
    (root / "annotations" / "empty.json").write_text(json.dumps(dict(coco_doc(0), images=[])))
    msg = data_error(coco_cfg(root, test_annotations="annotations/empty.json", test_images="test"), task=task)
    assert "test split is empty" in msg and "empty.json" in msg


def test_coco_test_keys_go_together() -> None:
    assert "test_images" in config_error("{dataset: coco, root: r, test_annotations: t.json}")
    assert "not both" in config_error(
        "{dataset: coco, root: r, test_annotations: t.json, test_images: t, test_fraction: 0.1}"
    )


# ----------------------------------------------------------------------------- voc
def voc_root(tmp_path: Path, n: int = 6) -> Path:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    palette = [0, 0, 0] + [v for k in range(1, 255) for v in (k, 255 - k, 7 * k % 256)] + [224, 224, 192]
    stems = [f"2007_{i:06d}" for i in range(1, n + 1)]
    for stem in stems:
        write_png(root / "JPEGImages" / f"{stem}.jpg", np.full((20, 24, 3), 80, np.uint8))
        obj, cls = np.zeros((20, 24), np.uint8), np.zeros((20, 24), np.uint8)
        obj[4:12, 4:16], cls[4:12, 4:16] = 1, 15
        for folder, arr in (("SegmentationObject", obj), ("SegmentationClass", cls)):
            im = Image.fromarray(arr, "P")
            im.putpalette(palette)
            (root / folder).mkdir(parents=True, exist_ok=True)
            im.save(root / folder / f"{stem}.png")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("".join(f"{s}\n" for s in stems[:4]))
    (sets / "val.txt").write_text("".join(f"{s}\n" for s in stems[4:5]))
    (sets / "mytest.txt").write_text(f"{stems[5]}\n")
    return root


@pytest.mark.parametrize("task", ["segmentation", "instance"])
def test_voc_test_split_and_test_fraction(tmp_path: Path, task: str) -> None:
    root = voc_root(tmp_path)
    b = build_data(cfg(dataset="voc", root=str(root), test_split="mytest"), task=task)
    s = splits_of(b)
    assert s["test"] == ["2007_000006"] and (len(s["train"]), len(s["val"])) == (4, 1)
    assert_disjoint(s, {f"2007_{i:06d}" for i in range(1, 7)})
    assert "test mytest.txt" in b.info["split"]
    f = build_data(cfg(dataset="voc", root=str(root), test_fraction=0.25), task=task)
    s = splits_of(f)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (3, 1, 1)
    assert set(s["test"]) < {f"2007_{i:06d}" for i in range(1, 5)}
    assert splits_of(build_data(cfg(dataset="voc", root=str(root), test_fraction=0.25), task=task)) == s
    if task == "instance":
        assert len(b.coco_gt_test.getImgIds()) == 1 and b.coco_gt_test.getAnnIds()
        assert not set(b.coco_gt_test.getImgIds()) & set(b.coco_gt.getImgIds())


def test_voc_shared_or_empty_test_list_is_one_line_error(tmp_path: Path) -> None:
    root = voc_root(tmp_path)
    sets = root / "ImageSets" / "Segmentation"
    (sets / "mytest.txt").write_text("2007_000002\n")
    msg = data_error(cfg(dataset="voc", root=str(root), test_split="mytest"))
    assert "'2007_000002'" in msg and "the train list" in msg and "mytest" in msg
    (sets / "mytest.txt").write_text("")
    msg = data_error(cfg(dataset="voc", root=str(root), test_split="mytest"))
    assert "test split is empty" in msg and "mytest.txt" in msg
    (sets / "train.txt").write_text("2007_000001\n")
    msg = data_error(cfg(dataset="voc", root=str(root), test_fraction=0.5))
    assert "data.test_fraction" in msg and "train.txt" in msg
    assert "not both" in config_error("{dataset: voc, root: r, test_split: t, test_fraction: 0.2}")


# ----------------------------------------------------------------------------- brain
@pytest.mark.skipif(
    importlib.util.find_spec("nilearn") is None or importlib.util.find_spec("nibabel") is None,
    reason="nilearn/nibabel not installed (pip install --no-deps nilearn==0.14.1 && pip install nibabel)",
)
def test_brain_test_band(tmp_path: Path) -> None:
    from stitch.data.brain import BANDS, split_slices

    for layout in BANDS:  # no slice shared; 4 unused slices wherever the split changes along z
        zs = sorted((z, s) for s, sl in split_slices(layout).items() for z in sl)
        assert len({z for z, _ in zs}) == len(zs)
        for (z0, s0), (z1, s1) in itertools.pairwise(zs):
            assert s0 == s1 or z1 - z0 == 5, (z0, s0, z1, s1)
    b = build_data(cfg(dataset="brain", normalize="none"), tmp_path)
    s = splits_of(b)
    assert [len(v) for v in s.values()] == [88, 20, 20]
    assert s["test"] == [f"z{z:03d}" for z in range(76, 96)] and s["val"][0] == "z100"
    assert_disjoint(s)
    assert Path(b.info["root"]).name == "brain-icbm152-2009a-v2"
    old = build_data(cfg(dataset="brain", normalize="none", test_region=False), tmp_path)
    assert old.test is None and (len(old.train), len(old.val)) == (112, 20)
    assert Path(old.info["root"]).name == "brain-icbm152-2009a-v1"


# ----------------------------------------------------------------------------- run ids
def run_ids(data_yaml: str) -> list[str]:
    from stitch.runs import plan_runs

    exp = parse_experiment(
        "name: x\ntask: segmentation\nbaseline: {model: unet, args: {num_classes: 3}}\n"
        f"data: {data_yaml}\ntrain: {{epochs: 1}}\nseeds: [0]\n"
    )
    return [p.run_id for p in plan_runs(exp)]


@pytest.mark.parametrize(
    "data, defaults",
    [
        ("{dataset: folder, root: f}", "test_list: null, test_fraction: 0.0"),
        ("{dataset: voc, root: v}", "test_split: null, test_fraction: 0"),
        ("{dataset: coco, root: c}", "test_annotations: null, test_images: null, test_fraction: 0"),
        ("{dataset: brain, test_region: false}", "root: null"),
        ("{dataset: shapes, test_fraction: 0}", "seed: 0"),
    ],
)
def test_run_ids_without_a_test_split_do_not_change(data: str, defaults: str) -> None:
    from stitch.plan import plan_variants
    from stitch.runs import resolved_config

    explicit = data[:-1] + ", " + defaults + "}"
    assert run_ids(data) == run_ids(explicit)
    exp = parse_experiment(f"name: x\ntask: segmentation\nbaseline: {{model: unet}}\ndata: {data}\n")
    resolved = resolved_config(exp, plan_variants(exp.cfg)[0], 0, 1)["data"]
    assert not {
        "test_list",
        "test_fraction",
        "test_annotations",
        "test_images",
        "test_split",
        "test_region",
    } & set(resolved)


@pytest.mark.parametrize(
    "data, changed",
    [
        ("{dataset: folder, root: f}", "{dataset: folder, root: f, test_fraction: 0.2}"),
        ("{dataset: voc, root: v}", "{dataset: voc, root: v, test_split: mytest}"),
        ("{dataset: coco, root: c}", "{dataset: coco, root: c, test_fraction: 0.1}"),
        ("{dataset: brain, test_region: false}", "{dataset: brain}"),
        ("{dataset: shapes, test_fraction: 0}", "{dataset: shapes}"),
    ],
)
def test_run_ids_with_a_test_split_differ(data: str, changed: str) -> None:
    assert not set(run_ids(data)) & set(run_ids(changed))

"""stitch.data: datasets written to / read from tmp_path, their splits, transforms and errors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import TypeAdapter

from stitch.config import DataCfg, parse_experiment
from stitch.data import DataBundle, DataError, build_data
from stitch.data.transforms import build_transforms
from stitch.errors import ConfigError, StitchError

CFG = TypeAdapter(DataCfg)
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def cfg(**kw: Any) -> Any:
    return CFG.validate_python(kw)


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


def data_error(c: Any, cache: Path | None = None) -> str:
    with pytest.raises(DataError) as info:
        build_data(c, cache)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, StitchError)
    return msg


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)
    return path


def folder_root(tmp_path: Path, n: int = 6, size: int = 32, labels: int = 3) -> Path:
    """``images/`` (RGB) + ``masks/`` (L) with ``n`` pairs whose masks use labels 0..labels-1."""
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for i in range(n):
        mask = (np.arange(size)[None, :] * labels // size).repeat(size, 0).astype(np.uint8)
        write_png(root / "images" / f"s{i}.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        write_png(root / "masks" / f"s{i}.png", mask)
    return root


# ----------------------------------------------------------------------------- shapes
def test_shapes_deterministic_files_and_ranges(tmp_path: Path) -> None:
    c = cfg(dataset="shapes", num_images=12, image_size=64, num_classes=5, seed=3, val_fraction=0.25)
    a = build_data(c, tmp_path / "a")
    b = build_data(c, tmp_path / "b")
    root_a, root_b = Path(a.info["root"]), Path(b.info["root"])
    files = digest(root_a)
    assert len(files) == 24 and files == digest(root_b)  # same seed: byte-identical files
    other = build_data(
        cfg(dataset="shapes", num_images=12, image_size=64, num_classes=5, seed=4), tmp_path / "a"
    )
    assert digest(Path(other.info["root"])) != files
    assert (len(a.train), len(a.val), len(a.test)) == (6, 3, 3)  # test_fraction 0.25 by default
    assert (
        a.num_classes == 5
        and a.in_channels == 3
        and a.class_names == ["background", "circle", "square", "triangle", "cross"]
    )
    seen: set[int] = set()
    for p in sorted((root_a / "masks").glob("*.png")):
        with Image.open(p) as im:
            assert im.mode == "L" and im.size == (64, 64)
            seen.update(np.unique(np.asarray(im)).tolist())
    with Image.open(root_a / "images" / "00000.png") as im:
        assert im.mode == "RGB"
    assert seen <= set(range(5)) and 0 in seen and len(seen) >= 3
    item = a.val[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (64, 64) and item["mask"].dtype == torch.int64 and item["index"] == 0
    assert torch.equal(a.val[1]["image"], a.val[1]["image"])  # val is deterministic


def test_shapes_reused_and_atomic(tmp_path: Path) -> None:
    c = cfg(dataset="shapes", num_images=4, image_size=32)
    root = Path(build_data(c, tmp_path).info["root"])
    stamp = (root / "meta.json").stat().st_mtime_ns
    build_data(c, tmp_path)
    assert (root / "meta.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary directories left
    (root / "masks" / "00001.png").unlink()
    assert "00001.png" in (msg := data_error(c, tmp_path)) and f"delete {root}" in msg


def test_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STITCH_DATA", str(tmp_path / "env"))
    b = build_data(cfg(dataset="shapes", num_images=2, image_size=16, test_fraction=0))
    assert Path(b.info["root"]).parent == tmp_path / "env"
    b = build_data(
        cfg(dataset="shapes", num_images=2, image_size=16, test_fraction=0, root=str(tmp_path / "own"))
    )
    assert Path(b.info["root"]).parent == tmp_path / "own"


# ----------------------------------------------------------------------------- folder
def test_folder_from_shapes_files_with_lists(tmp_path: Path) -> None:
    shapes = build_data(cfg(dataset="shapes", num_images=8, image_size=32, num_classes=4), tmp_path / "cache")
    root = Path(shapes.info["root"])
    (root / "train.lst").write_text("# training stems\n00000\n00001.png\n00002\n\n00003\n")
    (root / "val.lst").write_text("00006\n00007\n")
    b = build_data(
        cfg(
            dataset="folder",
            root=str(root),
            train_list="train.lst",
            val_list="val.lst",
            num_classes=4,
            image_size=32,
            normalize="none",
        )
    )
    assert (len(b.train), len(b.val)) == (4, 2)
    assert [b.val.name(i) for i in range(2)] == ["00006", "00007"]
    assert b.in_channels == 3 and b.num_classes == 4 and b.mean == (0.0,) * 3
    # the val sample is the file, unchanged (same size, normalize none)
    with Image.open(root / "images" / "00006.png") as im:
        expect = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    assert torch.allclose(b.val[0]["image"], expect)
    # one list only: the other split is the rest
    b = build_data(cfg(dataset="folder", root=str(root), val_list="val.lst", image_size=32))
    assert (len(b.train), len(b.val)) == (6, 2)
    # no lists: a seeded split, num_classes inferred from the masks
    b1 = build_data(cfg(dataset="folder", root=str(root), val_fraction=0.25, split_seed=1, image_size=32))
    b2 = build_data(cfg(dataset="folder", root=str(root), val_fraction=0.25, split_seed=1, image_size=32))
    b3 = build_data(cfg(dataset="folder", root=str(root), val_fraction=0.25, split_seed=2, image_size=32))
    names = lambda d: [d.name(i) for i in range(len(d))]
    assert (
        names(b1.val) == names(b2.val) and len(b1.val) == 2 and not set(names(b1.val)) & set(names(b1.train))
    )
    assert names(b3.val) != names(b1.val) or names(b3.train) != names(b1.train)
    assert (
        b1.num_classes
        == max(int(np.asarray(Image.open(p)).max()) for p in (root / "masks").glob("*.png")) + 1
    )


def test_folder_grey_and_16bit_images(tmp_path: Path) -> None:
    root = tmp_path / "grey"
    write_png(root / "images" / "a.png", np.full((32, 32), 7, np.uint8))
    write_png(root / "images" / "b.png", (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16))
    for s in "ab":
        write_png(root / "masks" / f"{s}.png", np.eye(32, dtype=np.uint8))
    b = build_data(cfg(dataset="folder", root=str(root), image_size=32, val_fraction=0.5))
    # imagenet on grey: channel averages
    assert b.in_channels == 1 and b.mean == (0.449,) and b.std == (0.226,)
    x = [b.val[0], b.train[0]]
    assert all(i["image"].shape == (1, 32, 32) for i in x)
    b = build_data(cfg(dataset="folder", root=str(root), image_size=32, channels=3, normalize="none"))
    assert b.in_channels == 3 and b.val[0]["image"].shape == (3, 32, 32)


# ----------------------------------------------------------------------------- errors
def test_folder_errors_name_the_file(tmp_path: Path) -> None:
    root = folder_root(tmp_path, n=3)
    base = {"dataset": "folder", "root": str(root), "image_size": 32}
    assert str(tmp_path / "nope") in data_error(cfg(**{**base, "root": str(tmp_path / "nope")}))
    assert "no masks folder" in data_error(cfg(**{**base, "masks": "labels"}))

    write_png(root / "images" / "extra.png", np.zeros((32, 32, 3), np.uint8))
    msg = data_error(cfg(**base))
    assert "extra.png" in msg and "image has no mask" in msg
    (root / "images" / "extra.png").unlink()

    write_png(root / "masks" / "lonely.png", np.zeros((32, 32), np.uint8))
    msg = data_error(cfg(**base))
    assert "lonely.png" in msg and "mask has no image" in msg
    (root / "masks" / "lonely.png").unlink()

    write_png(root / "masks" / "s0.jpg", np.zeros((32, 32), np.uint8))
    assert "s0.jpg" in (msg := data_error(cfg(**base))) and "PNG" in msg
    (root / "masks" / "s0.jpg").unlink()

    # labels outside the class range: found at build time when num_classes is inferred ...
    write_png(root / "masks" / "s1.png", np.full((32, 32), 1500 // 6, np.uint8))  # 250
    c = cfg(**base, num_classes=3, val_fraction=0.5, split_seed=0)
    b = build_data(c)  # ... and as the mask loads when num_classes is given
    with pytest.raises(DataError) as info:
        for ds in (b.train, b.val):
            for i in range(len(ds)):
                ds[i]
    msg = str(info.value)
    assert "s1.png" in msg and "250" in msg and "0..2" in msg and "\n" not in msg
    write_png(root / "masks" / "s1.png", np.full((32, 32), 255, np.uint8))  # ignore_index is fine
    for ds in (b.train, b.val):
        for i in range(len(ds)):
            ds[i]

    # a corrupt image
    (root / "images" / "s2.png").write_bytes(b"not a png")
    b = build_data(cfg(**base, num_classes=3, val_fraction=0.5))
    with pytest.raises(DataError, match=r"s2\.png: cannot read the image"):
        for ds in (b.train, b.val):
            for i in range(len(ds)):
                ds[i]

    # a colour mask, a mask of the wrong size
    root2 = folder_root(tmp_path / "two", n=2)
    write_png(
        root2 / "masks" / "s0.png", np.random.default_rng(0).integers(0, 3, (32, 32, 3), dtype=np.uint8)
    )
    write_png(root2 / "masks" / "s1.png", np.zeros((16, 32), np.uint8))
    b = build_data(cfg(dataset="folder", root=str(root2), num_classes=3, image_size=32, val_fraction=0.5))
    msgs = []
    for ds in (b.train, b.val):
        with pytest.raises(DataError) as info:
            ds[0]
        msgs.append(str(info.value))
    assert any("s0.png" in m and "colour" in m for m in msgs) and any(
        "s1.png" in m and "must match" in m for m in msgs
    )


def test_folder_label_and_split_errors(tmp_path: Path) -> None:
    root = folder_root(tmp_path, n=3)
    base = {"dataset": "folder", "root": str(root), "image_size": 32}
    write_png(root / "masks" / "s2.png", np.full((32, 32), 2000 // 8, np.uint8))  # 250, scanned at build time
    assert build_data(cfg(**base)).num_classes == 251  # inferred: the largest label + 1
    assert build_data(cfg(**base, ignore_index=250)).num_classes == 3  # ignore_index skipped
    for i in range(3):
        write_png(root / "masks" / f"s{i}.png", (np.eye(32) * 255).astype(np.uint8))  # 0/255 binary masks
    msg = data_error(cfg(**base))
    assert "rewrite them as 0/1" in msg and str(root / "masks") in msg
    for i in range(3):
        write_png(root / "masks" / f"s{i}.png", np.eye(32, dtype=np.uint8))

    (root / "tr.txt").write_text("s0\ns9\n")
    msg = data_error(cfg(**base, train_list="tr.txt"))
    assert "tr.txt" in msg and "line 2" in msg and "'s9'" in msg
    (root / "tr.txt").write_text("s0\ns1\n")
    (root / "va.txt").write_text("s1\n")
    assert (
        "va.txt" in (msg := data_error(cfg(**base, train_list="tr.txt", val_list="va.txt"))) and "both" in msg
    )
    (root / "va.txt").write_text("# nothing\n")
    assert (
        "va.txt" in (msg := data_error(cfg(**base, train_list="tr.txt", val_list="va.txt")))
        and "val split is empty" in msg
    )
    assert "missing.txt" in data_error(cfg(**base, train_list="missing.txt"))
    assert "ignore_index 1 is a class index" in data_error(cfg(**base, ignore_index=1, num_classes=3))
    assert "mean/std" in data_error(cfg(**base, normalize=[[0.5], [0.2]]))

    one = folder_root(tmp_path / "one", n=1)
    assert "at least 2" in data_error(cfg(dataset="folder", root=str(one), image_size=32))


def test_config_level_data_checks() -> None:
    base = "name: x\ntask: segmentation\nbaseline: {model: unet}\n"
    with pytest.raises(ConfigError, match="scale is"):
        parse_experiment(base + "data: {dataset: shapes, augment: {scale: [2, 1]}}\n", "exp.yaml")
    with pytest.raises(ConfigError, match=r"\[0, 1\] pixel scale"):
        parse_experiment(
            base + "data: {dataset: shapes, normalize: [[123, 116, 103], [58, 57, 57]]}\n", "exp.yaml"
        )
    with pytest.raises(ConfigError, match="class_names has 3 names"):
        parse_experiment(
            base + "data: {dataset: folder, root: x, num_classes: 2, class_names: [a, b, c]}\n", "exp.yaml"
        )


# ----------------------------------------------------------------------------- augmentation
def _aligned(image: torch.Tensor, mask: torch.Tensor, ignore: int) -> float:
    """Fraction of non-ignored pixels whose image value (x 255 / 40) equals the mask label."""
    keep = mask != ignore
    return float(((image[0] * 255 / 40).round().long() == mask)[keep].float().mean())


def test_augmentation_keeps_image_and_mask_aligned() -> None:
    from torchvision import tv_tensors

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (6, 5)).repeat(8, 0).repeat(8, 1)  # 48 x 40, blocky, asymmetric
    img = tv_tensors.Image(torch.from_numpy((labels * 40).astype(np.uint8))[None].repeat(3, 1, 1))
    msk = tv_tensors.Mask(torch.from_numpy(labels.astype(np.int64)))
    c = cfg(
        dataset="shapes",
        image_size=[48, 48],
        normalize="none",
        augment={"hflip": True, "vflip": True, "rotate90": True},
    )
    t = build_transforms(c, 3, (0.0,) * 3, (1.0,) * 3, train=True)
    torch.manual_seed(0)
    shapes_seen = set()
    for _ in range(24):
        x, m = t(img, msk)
        assert x.shape == (3, 48, 48) and m.shape == (48, 48) and m.dtype == torch.int64
        assert _aligned(x, m, 255) == 1.0  # exact: flips, 90-degree turns, crops and pads
        shapes_seen.add(tuple(np.flatnonzero((m != 255).any(0).numpy())[[0, -1]]))
    assert len(shapes_seen) > 1  # rotations and crops happened
    c = cfg(
        dataset="shapes",
        image_size=[48, 48],
        normalize="none",
        augment={"scale": [0.5, 2.0], "color_jitter": 0.0},
    )
    t = build_transforms(c, 3, (0.0,) * 3, (1.0,) * 3, train=True)
    for _ in range(10):
        x, m = t(img, msk)
        assert _aligned(x, m, 255) > 0.85  # resampling blurs only the block edges
    # colour jitter changes the image, never the mask
    c = cfg(
        dataset="shapes", image_size=[48, 48], normalize="none", augment={"hflip": False, "color_jitter": 0.5}
    )
    x, m = build_transforms(c, 3, (0.0,) * 3, (1.0,) * 3, train=True)(img, msk)
    cols = (m != 255).all(0)
    assert int(cols.sum()) == 40 and torch.equal(m[:, cols], msk)  # padded to 48 wide at a random offset
    assert not torch.allclose(x[0, :, cols] * 255 / 40, msk.float())


def test_val_transform_resizes_pads_and_normalises() -> None:
    from torchvision import tv_tensors

    img = tv_tensors.Image(torch.full((1, 20, 40), 255, dtype=torch.uint8))
    msk = tv_tensors.Mask(torch.ones(20, 40, dtype=torch.int64))
    c = cfg(dataset="nuclei", image_size=[64, 64], normalize=[[0.5], [0.25]], ignore_index=-100)
    x, m = build_transforms(c, 1, (0.5,), (0.25,), train=False)(img, msk)
    assert x.shape == (1, 64, 64) and m.shape == (64, 64)
    assert (m[:32] == 1).all() and (m[32:] == -100).all()  # 20x40 -> 32x64, padded at the bottom
    assert torch.allclose(x[0, :32], torch.tensor(2.0)) and torch.allclose(x[0, 32:], torch.tensor(-2.0))


# ----------------------------------------------------------------------------- nuclei (real sample)
HAS_STARDIST = importlib.util.find_spec("stardist") is not None


LAYOUTS = {  # test_region -> split: (row range, tiles at 128)
    True: {"train": ((0, 256), 21), "val": ((256, 384), 4), "test": ((384, 512), 4)},
    False: {"train": ((0, 384), 35), "val": ((384, 512), 4)},
}


@pytest.mark.skipif(
    not HAS_STARDIST, reason="stardist wheel not installed (pip install --no-deps stardist==0.9.2)"
)
@pytest.mark.parametrize("test_region", [True, False])
def test_nuclei_tiles_split_masks_and_coco(tmp_path: Path, test_region: bool) -> None:
    from pycocotools.coco import COCO

    layout = LAYOUTS[test_region]
    b = build_data(cfg(dataset="nuclei", normalize="none", test_region=test_region), tmp_path)
    root = Path(b.info["root"])
    assert root.name == f"nuclei-dsb2018-tile128-v{2 if test_region else 1}"
    sets = {"train": b.train, "val": b.val, **({"test": b.test} if test_region else {})}
    assert (b.test is None) is not test_region
    assert {s: len(ds) for s, ds in sets.items()} == {s: n for s, (_, n) in layout.items()}
    assert b.in_channels == 1 and b.class_names == ["background", "nucleus"]
    meta = json.loads((root / "meta.json").read_text())
    assert meta["nuclei"] == 125
    assert {s: meta["split"][f"{s}_rows"] for s in layout} == {s: list(r) for s, (r, _) in layout.items()}

    covered = {s: np.zeros((512, 512), bool) for s in layout}
    ids: dict[str, set] = {}
    for split, ds in sets.items():
        coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
        assert len(coco.imgs) == len(ds)
        for img in coco.imgs.values():
            x0, y0, x1, y1 = img["tile_box"]
            covered[split][y0:y1, x0:x1] = True
            sem = np.asarray(Image.open(root / "masks" / img["file_name"]))
            assert set(np.unique(sem)) <= {0, 1}
            inst = np.zeros_like(sem)
            for ann in coco.imgToAnns[img["id"]]:
                inst |= coco.annToMask(ann)
            assert np.array_equal(inst, sem)  # instances cover exactly the semantic foreground
        ids[split] = {a["instance_id"] for a in coco.anns.values()}
        assert meta["counts"][split]["nuclei"] == len(ids[split])
    for a in layout:  # no pixel in two splits, each split covers its rows
        (r0, r1), _ = layout[a]
        assert covered[a][r0:r1].all() and not covered[a][:r0].any() and not covered[a][r1:].any()
        for c in layout:
            assert a == c or not (covered[a] & covered[c]).any()
    assert len(set().union(*ids.values())) == 125  # every nucleus of the full image appears in some tile
    item = b.train[0]
    assert item["image"].shape == (1, 128, 128) and set(item["mask"].unique().tolist()) == {0, 1}
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0


@pytest.mark.skipif(
    not HAS_STARDIST, reason="stardist wheel not installed (pip install --no-deps stardist==0.9.2)"
)
def test_nuclei_small_tiles(tmp_path: Path) -> None:
    b = build_data(cfg(dataset="nuclei", tile=64, image_size=64), tmp_path)
    assert (len(b.train), len(b.val), len(b.test)) == (7 * 15, 2 * 8, 2 * 8)
    old = build_data(cfg(dataset="nuclei", tile=64, image_size=64, test_region=False), tmp_path)
    assert (len(old.train), len(old.val), old.test) == (11 * 15, 2 * 8, None)


def test_nuclei_without_stardist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "stardist" else real(name, *a)
    )
    msg = data_error(cfg(dataset="nuclei"), tmp_path)
    assert "pip install --no-deps stardist==0.9.2" in msg
    assert list(tmp_path.iterdir()) == []  # nothing half-written


# ----------------------------------------------------------------------------- VOC and COCO fixtures
def test_voc_layout(tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    palette = [0, 0, 0, 128, 0, 0] + [0] * (3 * 253) + [224, 224, 192]
    for i, stem in enumerate(["2007_000001", "2007_000002", "2007_000003"]):
        write_png(root / "JPEGImages" / f"{stem}.jpg", np.full((30, 40, 3), 60 * i, np.uint8))
        m = np.zeros((30, 40), np.uint8)
        m[5:15, 5:20] = 15  # person
        m[4, 4:21] = 255  # border
        pim = Image.fromarray(m, "P")
        pim.putpalette(palette)
        (root / "SegmentationClass").mkdir(exist_ok=True)
        pim.save(root / "SegmentationClass" / f"{stem}.png")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000001\n2007_000002\n")
    (sets / "val.txt").write_text("2007_000003\n")
    b = build_data(
        cfg(dataset="voc", root=str(tmp_path / "VOCdevkit"), image_size=48, ignore_index=-1), tmp_path
    )
    assert (len(b.train), len(b.val), b.num_classes, b.class_names[15]) == (2, 1, 21, "person")
    m = b.val[0]["mask"]
    # 255 border -> ignore_index; pad -> ignore
    assert m.shape == (48, 48) and set(m.unique().tolist()) == {-1, 0, 15}
    assert int((m == 15).sum()) > 0 and (m[36:] == -1).all()  # 30x40 -> 36x48, padded below

    (sets / "val.txt").write_text("2007_000009\n")
    assert "2007_000009.jpg" in (msg := data_error(cfg(dataset="voc", root=str(root)))) and "val.txt" in msg
    (sets / "val.txt").write_text("")
    assert "val.txt" in (msg := data_error(cfg(dataset="voc", root=str(root)))) and "empty" in msg
    (tmp_path / "empty").mkdir()
    assert (
        "JPEGImages" in (msg := data_error(cfg(dataset="voc", root=str(tmp_path / "empty"))))
        and "empty" in msg
    )


def test_coco_semantic(tmp_path: Path) -> None:
    from pycocotools import mask as mask_util

    root = tmp_path / "coco"
    for split in ("train", "val"):
        for i in (1, 2):
            write_png(root / split / f"{i:03d}.jpg", np.full((32, 48, 3), 100, np.uint8))
    crowd = np.zeros((32, 48), np.uint8)
    crowd[20:30, 30:46] = 1
    rle = mask_util.encode(np.asfortranarray(crowd))
    rle["counts"] = rle["counts"].decode("ascii")

    def doc(with_crowd: bool) -> dict:
        anns = [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "iscrowd": 0,
                "area": 300.0,
                "bbox": [0, 0, 20, 15],
                "segmentation": [[0, 0, 20, 0, 20, 15, 0, 15]],
            },  # big box, class 7 -> label 2
            {
                "id": 2,
                "image_id": 1,
                "category_id": 3,
                "iscrowd": 0,
                "area": 16.0,
                "bbox": [4, 4, 4, 4],
                "segmentation": [[4, 4, 8, 4, 8, 8, 4, 8]],
            },  # small box on top of it, class 3 -> label 1
        ]
        if with_crowd:
            anns.append(
                {
                    "id": 3,
                    "image_id": 1,
                    "category_id": 3,
                    "iscrowd": 1,
                    "area": 160.0,
                    "bbox": [30, 20, 16, 10],
                    "segmentation": rle,
                }
            )
        return {
            "images": [{"id": i, "file_name": f"{i:03d}.jpg", "height": 32, "width": 48} for i in (1, 2)],
            "annotations": anns,
            "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        }

    (root / "annotations").mkdir()
    (root / "annotations" / "train.json").write_text(json.dumps(doc(True)))
    (root / "annotations" / "val.json").write_text(json.dumps(doc(False)))
    c = cfg(
        dataset="coco",
        root=str(root),
        train_annotations="annotations/train.json",
        val_annotations="annotations/val.json",
        train_images="train",
        val_images="val",
        image_size=[32, 48],
        augment={"hflip": False},
    )
    b = build_data(c)
    assert b.class_names == ["background", "cat", "dog"] and (len(b.train), len(b.val)) == (2, 2)
    m = b.train[0]["mask"]
    assert m[2, 2] == 2 and m[5, 5] == 1 and m[25, 40] == 255 and m[25, 10] == 0
    assert int((m == 255).sum()) == 160 and int((b.train[1]["mask"] != 0).sum()) == 0
    assert not (b.val[0]["mask"] == 255).any()

    bad = doc(True)
    bad["annotations"][0]["category_id"] = 99
    (root / "annotations" / "val.json").write_text(json.dumps(bad))
    assert "val.json" in (msg := data_error(c)) and "category_id 99" in msg
    (root / "annotations" / "val.json").write_text("{not json")
    assert "val.json" in (msg := data_error(c)) and "JSON" in msg
    (root / "annotations" / "val.json").write_text(json.dumps(doc(False)))
    (root / "val" / "002.jpg").unlink()
    assert "002.jpg" in (msg := data_error(c)) and "missing" in msg


# ----------------------------------------------------------------------------- brain (optional)
@pytest.mark.skipif(
    importlib.util.find_spec("nilearn") is None or importlib.util.find_spec("nibabel") is None,
    reason="nilearn/nibabel not installed (pip install --no-deps nilearn==0.14.1 && pip install nibabel)",
)
def test_brain_slices(tmp_path: Path) -> None:
    b = build_data(cfg(dataset="brain", image_size=[240, 208], normalize="none"), tmp_path)
    assert (len(b.train), len(b.val), len(b.test), b.num_classes, b.in_channels) == (88, 20, 20, 3, 1)
    names = {b.train.name(i) for i in range(len(b.train))}
    assert not names & {b.val.name(i) for i in range(len(b.val))}
    assert not (names | {b.val.name(i) for i in range(len(b.val))}) & {b.test.name(i) for i in range(20)}
    m = b.val[10]["mask"]
    # 233x197 -> 240x203, padded right
    assert set(m.unique().tolist()) == {0, 1, 2, 255} and (m[:, 203:] == 255).all()


def test_bundle_is_a_dataloader_source(tmp_path: Path) -> None:
    b = build_data(cfg(dataset="shapes", num_images=6, image_size=32, test_fraction=0), tmp_path)
    assert isinstance(b, DataBundle)
    batch = next(iter(torch.utils.data.DataLoader(b.train, batch_size=4)))
    assert (
        batch["image"].shape == (4, 3, 32, 32)
        and batch["mask"].shape == (4, 32, 32)
        and batch["index"].tolist() == [0, 1, 2, 3]
    )
    assert "shapes: 4 train / 2 val" in b.describe()

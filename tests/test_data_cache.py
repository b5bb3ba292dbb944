"""The decoded-data cache (``data.cache: memory | device``) and persistent DataLoader workers:
neither changes a batch, a training history or a run id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from yaml_snippets import tiny_shapes_unet

from stitch.build import stitch_variant
from stitch.config import parse_experiment
from stitch.config.schema_data import FolderData, ShapesData
from stitch.data import DataError, build_data
from stitch.data.cache import MemorySource
from stitch.data.device_augment import DeviceTrainSet
from stitch.devices import to_device
from stitch.engine import train
from stitch.loaders import make_loaders, seed_worker, train_batches
from stitch.runs import experiment_data, plan_runs
from stitch.seeding import epoch_seed, seed_everything
from stitch.tasks import make_task

CPU = torch.device("cpu")
#: every random step of the segmentation pipeline
AUGMENT = {"hflip": True, "vflip": True, "rotate90": True, "scale": (0.7, 1.4), "color_jitter": 0.3}


def epoch_batches(data: Any, workers: int = 0, epochs: int = 2, make: Any = make_loaders) -> list[dict]:
    """The training batches of ``epochs`` epochs as the engine draws them (seeded per epoch, moved
    to the device, the bundle's batch transform applied), with a draw from the main process's
    generator after each epoch (so its stream is compared too); ``make`` builds the loaders."""
    loader, _, gen = make(data.train, data.val, 5, workers, CPU)
    out: list[dict] = []
    for epoch in range(1, epochs + 1):
        es = epoch_seed(0, epoch)
        seed_everything(es)
        gen.manual_seed(es)
        for batch in loader:
            batch = to_device(batch, CPU)
            if data.train_batch_transform is not None:
                batch = data.train_batch_transform(batch)
            out.append(batch)
        out.append({"after": torch.rand(3)})
    return out


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key


def shapes(tmp_path: Path, cache: str, size: tuple[int, int] = (32, 32), **kw: Any) -> Any:
    cfg = ShapesData(dataset="shapes", num_images=24, image_size=size, augment=AUGMENT, cache=cache, **kw)
    return build_data(cfg, cache_dir=tmp_path / "data")


def folder(tmp_path: Path, cache: str) -> Any:
    """Grey images of different sizes, masks with ``ignore_index`` -100 (not a uint8 value)."""
    root = tmp_path / "folder"
    if not root.exists():
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        rng = np.random.default_rng(0)
        for n in range(10):
            h, w = 20 + 3 * n, 40 - 2 * n
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(root / "images" / f"{n}.png")
            Image.fromarray(rng.integers(0, 2, (h, w), dtype=np.uint8)).save(root / "masks" / f"{n}.png")
    cfg = FolderData(
        dataset="folder",
        root=str(root),
        image_size=(32, 32),
        augment=AUGMENT,
        ignore_index=-100,
        normalize="imagenet",
        cache=cache,
    )
    return build_data(cfg)


@pytest.mark.parametrize("make", [shapes, folder], ids=["shapes RGB", "folder grey, sizes differ"])
def test_memory_and_device_cache_give_the_plain_batches(tmp_path: Path, make: Any) -> None:
    plain = epoch_batches(make(tmp_path, "none"))
    memory = make(tmp_path, "memory")
    assert isinstance(memory.train.source, MemorySource) and memory.train_batch_transform is None
    assert_same_batches(plain, epoch_batches(memory))
    device = make(tmp_path, "device")
    assert isinstance(device.train, DeviceTrainSet) and device.train_batch_transform is not None
    assert_same_batches(plain, epoch_batches(device))
    # validation and test read the same items from memory
    for split in ("val", "test"):
        a, b = getattr(make(tmp_path, "none"), split), getattr(device, split)
        if a is not None:
            assert isinstance(b.source, MemorySource)
            for i in range(len(a)):
                assert all(torch.equal(torch.as_tensor(a[i][k]), torch.as_tensor(b[i][k])) for k in a[i])


def test_memory_cache_keeps_its_samples_unchanged(tmp_path: Path) -> None:
    data = shapes(tmp_path, "memory")
    first = [data.train.source.load(i) for i in range(len(data.train))]
    for i in range(len(data.train)):
        image, mask = data.train.source.load(i)
        image[:] = 0  # a transform writing into what it was given
        mask[:] = 7
    again = [data.train.source.load(i) for i in range(len(data.train))]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    assert first[0][1].dtype == data.train.source.source.load(0)[1].dtype


def history(tmp_path: Path, cache: str, workers: int = 0, fresh_workers: bool = False) -> list[dict]:
    """The untimed history of 2 epochs of a width-4 U-Net with dropout, deterministic."""
    text = tiny_shapes_unet("cache", tmp_path / "data", 2).replace(
        "  num_classes: 3\n",
        f"  num_classes: 3\n  cache: {cache}\n  augment: {{hflip: true, vflip: true, rotate90: true, "
        "scale: [0.7, 1.4], color_jitter: 0.3}\n",
    )
    exp, data = experiment_data(parse_experiment(text, "cache.yaml"))
    task = make_task(exp.cfg.task, data, exp.cfg.train.loss)
    model = torch.nn.Sequential(stitch_variant(exp, "Baseline", 0).model, torch.nn.Dropout(0.3))
    ckpt = tmp_path / f"ckpt-{cache}-{workers}-{fresh_workers}"
    state = train(
        model,
        task,
        data.train,
        data.val,
        exp.cfg.train,
        0,
        CPU,
        ckpt,
        "miou",
        num_workers=workers,
        batch_transform=data.train_batch_transform,
    )
    return [{k: v for k, v in h.items() if k not in ("seconds", "train_images_per_s")} for h in state.history]


def test_cache_gives_the_same_training_history(tmp_path: Path) -> None:
    plain = history(tmp_path, "none")
    assert history(tmp_path, "memory") == plain
    assert history(tmp_path, "device") == plain


def fresh_worker_loaders(
    train_set: Any, val_set: Any, batch_size: int, workers: int, device: Any, collate=None, shard=None
):
    """The loaders of before persistent workers: a fresh iterator, so fresh workers, every epoch
    (one process: ``shard`` is ``None``)."""
    assert shard is None
    bs, drop_last, _ = train_batches(len(train_set), batch_size)
    gen = torch.Generator()
    loader = DataLoader(
        train_set,
        batch_size=bs,
        shuffle=True,
        drop_last=drop_last,
        num_workers=workers,
        generator=gen,
        worker_init_fn=seed_worker,
        collate_fn=collate,
    )
    return loader, DataLoader(val_set, batch_size=bs, num_workers=workers, collate_fn=collate), gen


def test_persistent_workers_give_the_batches_and_history_of_fresh_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = shapes(tmp_path, "none")
    loader, _, _ = make_loaders(data.train, data.val, 5, 2, CPU)
    assert loader.persistent_workers and loader.num_workers == 2 and not loader.pin_memory
    persistent = epoch_batches(data, workers=2, epochs=3)
    assert_same_batches(persistent, epoch_batches(data, workers=2, epochs=3, make=fresh_worker_loaders))
    new = history(tmp_path, "none", workers=2)
    monkeypatch.setattr("stitch.engine.make_loaders", fresh_worker_loaders)
    assert history(tmp_path, "none", workers=2, fresh_workers=True) == new


def test_device_cache_is_loaded_without_workers_or_pinning(tmp_path: Path) -> None:
    data = shapes(tmp_path, "device")
    loader, val_loader, _ = make_loaders(data.train, data.val, 5, 2, CPU)
    assert loader.num_workers == 0 and not loader.pin_memory and data.train.device == CPU
    assert val_loader.num_workers == 2  # validation still reads from memory in workers


def test_device_cache_too_large_for_the_device_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = shapes(tmp_path, "device")
    need = data.train.nbytes()
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (need, 10 * need))
    with pytest.raises(
        DataError, match=r"^data.cache: device needs .* MiB .* use data.cache: memory$"
    ) as exc:
        data.train.place(torch.device("cuda:0"))
    assert "\n" not in str(exc.value) and data.train.device == CPU  # nothing moved


def test_device_cache_refuses_the_instance_task_in_one_line(tmp_path: Path) -> None:
    cfg = ShapesData(dataset="shapes", num_images=8, image_size=(32, 32), cache="device")
    with pytest.raises(
        DataError, match=r"^data.cache: device is for the segmentation task .*use data.cache: memory$"
    ):
        build_data(cfg, cache_dir=tmp_path / "data", task="instance")
    memory = build_data(
        cfg.model_copy(update={"cache": "memory"}), cache_dir=tmp_path / "data", task="instance"
    )
    plain = build_data(cfg.model_copy(update={"cache": "none"}), cache_dir=tmp_path / "data", task="instance")
    torch.manual_seed(0)
    a = plain.train[0]
    torch.manual_seed(0)
    b = memory.train[0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"]["masks"], b["target"]["masks"])


def test_cache_leaves_run_ids_alone(tmp_path: Path) -> None:
    ids = {}
    for cache in ("none", "memory", "device"):
        text = tiny_shapes_unet("ids", tmp_path / "data", 2).replace(
            "  num_classes: 3\n", f"  num_classes: 3\n  cache: {cache}\n"
        )
        ids[cache] = [p.run_id for p in plan_runs(parse_experiment(text, "ids.yaml"))]
    assert ids["none"] == ids["memory"] == ids["device"]
    default = tiny_shapes_unet("ids", tmp_path / "data", 2)
    assert [p.run_id for p in plan_runs(parse_experiment(default, "ids.yaml"))] == ids["none"]


@pytest.mark.usefixtures("no_report")  # the runs are checked, not their reports
def test_stitch_run_with_the_device_cache_stores_the_plain_results(tmp_path: Path) -> None:
    from stitch.cli import main
    from stitch.store import ResultStore

    rows = {}
    for cache in ("none", "device"):
        text = (
            tiny_shapes_unet("cli_cache", tmp_path / "data", 2).replace(
                "  num_classes: 3\n",
                f"  num_classes: 3\n  cache: {cache}\n  augment: {{rotate90: true, scale: [0.8, 1.2]}}\n",
            )
            + "seeds: [0]\n"
        )
        path = tmp_path / f"{cache}.yaml"
        path.write_text(text)
        assert main(["run", str(path), "--out", str(tmp_path / cache), "--quiet"]) == 0
        with ResultStore(tmp_path / cache / "cli_cache" / "runs.sqlite") as store:
            (row,) = store.rows()
        untimed = [
            {k: v for k, v in h.items() if k not in ("seconds", "train_images_per_s")} for h in row.history
        ]
        rows[cache] = (row.run_id, row.status, untimed, row.final_metrics)
    assert rows["device"] == rows["none"] and rows["none"][1] == "done"


def test_device_cache_with_workers_is_refused_in_one_line(tmp_path: Path) -> None:
    from stitch.errors import StitchError

    text = tiny_shapes_unet("w", tmp_path / "data", 2).replace(
        "  num_classes: 3\n", "  num_classes: 3\n  cache: device\n  num_workers: 2\n"
    )
    with pytest.raises(StitchError, match="set num_workers: 0, or use cache: memory with workers") as exc:
        parse_experiment(text, "w.yaml")
    assert "\n" not in str(exc.value)
    with pytest.raises(StitchError, match="cache"):
        parse_experiment(text.replace("cache: device", "cache: gpu"), "w.yaml")


# -- batched device augmentation (stitch.data.batched_augment, stitch.data.batched_color) ----------


def plain_and_batched(plain: Any, device: Any, order: list[int], seed: int) -> tuple[dict, dict, list]:
    """One batch of ``order`` drawn from seed ``seed`` by the plain pipeline (default collate) and by
    the device cache (plans, then :meth:`DeviceTrainSet.augment_batch`), and the drawn plans."""
    from torch.utils.data import default_collate

    torch.manual_seed(seed)
    a = default_collate([plain.train[i] for i in order])
    torch.manual_seed(seed)
    batch = device.train.collate([device.train[i] for i in order])
    return a, device.train.augment_batch(batch), batch["plan"].samples


def odd_shapes(tmp_path: Path, cache: str) -> Any:
    """RGB tiles of 21 x 27: rows that are no multiple of a vector's width."""
    return shapes(tmp_path, cache, size=(21, 27))


@pytest.mark.parametrize(
    "make", [shapes, odd_shapes, folder], ids=["shapes RGB", "shapes RGB 21x27", "folder grey, sizes differ"]
)
def test_batched_augmentation_gives_the_plain_batch_for_every_step(tmp_path: Path, make: Any) -> None:
    plain, device = make(tmp_path, "none"), make(tmp_path, "device")
    steps = device.train.steps
    kinds = {type(s).__name__: n for n, s in enumerate(steps)}
    seen: dict[str, set] = {k: set() for k in ("k", "hflip", "vflip", "pad", "gather", "order", "colour")}
    outs_per_batch = []
    for seed in range(4):
        order = torch.randperm(len(device.train), generator=torch.Generator().manual_seed(seed)).tolist()
        a, b, samples = plain_and_batched(plain, device, order, seed)
        assert a.keys() == b.keys() and b["image"].shape[-2:] == tuple(
            device.train.steps[kinds["RandomCrop"]].size
        )
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (seed, key)
        plans = [dict(plan) for _, plan in samples]
        crop, jitter = kinds["RandomCrop"], kinds["ColorJitter"]
        for p in plans:
            seen["k"].add(p[kinds["RandomRot90"]]["k"])
            seen["hflip"].add(kinds["RandomHorizontalFlip"] in p)
            seen["vflip"].add(kinds["RandomVerticalFlip"] in p)
            seen["pad"].add(p[crop]["needs_pad"])
            seen["order"].add(tuple(p[jitter]["fn_idx"]))
            seen["colour"].update(k for k, v in p[jitter].items() if k.endswith("factor") and v is not None)
        outs = [tuple(p[kinds["FitResize"]]["out"]) for p in plans]
        outs_per_batch.append(len(set(outs)))
        for out in set(outs):  # samples resized alike, cut at different offsets: the batched gather
            offsets = {(p[crop]["top"], p[crop]["left"]) for p, o in zip(plans, outs) if o == out}
            seen["gather"].add(len(offsets) > 1)
    # every step ran with non-trivial parameters
    assert seen["k"] == {0, 1, 2, 3} and seen["hflip"] == seen["vflip"] == seen["pad"] == {True, False}
    assert True in seen["gather"] and max(outs_per_batch) > 1 and len(seen["order"]) > 4
    grey = plain.train[0]["image"].shape[0] == 1
    factors = {"brightness_factor", "contrast_factor"} | (
        set() if grey else {"saturation_factor", "hue_factor"}
    )
    assert seen["colour"] == factors


def test_fused_multiply_add_rounds_once() -> None:
    from fractions import Fraction

    from stitch.data.batched_color import fused_multiply_add

    gen = torch.Generator().manual_seed(0)
    a = torch.rand(4000, generator=gen) * 300 - 20
    b = torch.rand(4000, generator=gen) * 255
    alpha = (torch.rand(4000, generator=gen) - 0.5) * torch.tensor(2.0).pow(-torch.randint(0, 30, (4000,)))
    # a tie: 1 + 2**-23 + alpha * b lies 2**-60 below the float32 midpoint 1 + 2**-23 + 2**-24
    tie = [(1 + 2**-23, 1 + 2**-18, (1 - 2**-18) * 2**-24), (-1 - 2**-23, 1 + 2**-18, -(1 - 2**-18) * 2**-24)]
    a = torch.cat([a, torch.tensor([t[0] for t in tie])])
    alpha = torch.cat([alpha, torch.tensor([t[1] for t in tie])])
    b = torch.cat([b, torch.tensor([t[2] for t in tie])])
    got = fused_multiply_add(a, b, alpha)

    def rounded(x: Fraction) -> float:
        r = np.float32(float(x))
        cands = [np.nextafter(r, np.float32(-np.inf)), r, np.nextafter(r, np.float32(np.inf))]
        best = min(abs(Fraction(float(c)) - x) for c in cands)
        near = [c for c in cands if abs(Fraction(float(c)) - x) == best]
        return float(min(near, key=lambda c: int(np.float32(c).view(np.uint32)) & 1))

    exact = [
        rounded(Fraction(float(x)) + Fraction(float(y)) * Fraction(float(z))) for x, y, z in zip(a, alpha, b)
    ]
    assert got.tolist() == exact
    naive = (a[-2:].double() + alpha[-2:].double() * b[-2:].double()).float()
    assert not torch.equal(naive, got[-2:])  # the ties are where rounding twice goes wrong


def test_colour_jitter_runs_per_sample_where_the_blend_rounding_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stitch.data import batched_color

    monkeypatch.setitem(batched_color.BLEND_MODES, "cpu", "unknown")
    plain, device = shapes(tmp_path, "none"), shapes(tmp_path, "device")
    a, b, _ = plain_and_batched(plain, device, list(range(12)), 3)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_strong_colour_jitter_gives_the_plain_batch(tmp_path: Path) -> None:
    """Saturation factors below 0.5: the blend's sum is not known exact, the general rounding runs."""
    aug = dict(AUGMENT, color_jitter=0.9)
    made = [
        build_data(
            ShapesData(dataset="shapes", num_images=24, image_size=(32, 32), augment=aug, cache=c),
            cache_dir=tmp_path / "data",
        )
        for c in ("none", "device")
    ]
    jitter = next(n for n, s in enumerate(made[1].train.steps) if isinstance(s, v2.ColorJitter))
    low = False
    for seed in range(2):
        a, b, samples = plain_and_batched(*made, list(range(len(made[1].train))), seed)
        assert all(torch.equal(a[k], b[k]) for k in a)
        low |= any(dict(plan)[jitter]["saturation_factor"] < 0.5 for _, plan in samples)
    assert low


def aten_ops(dataset: Any, size: int) -> int:
    """Top-level aten operations :meth:`DeviceTrainSet.augment_batch` runs for a batch of ``size``."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    batch = dataset.collate([dataset[i % len(dataset)] for i in range(size)])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        dataset.augment_batch(batch)
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    return sum(1 for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))


def test_batched_augmentation_runs_as_many_operations_for_64_samples_as_for_16(tmp_path: Path) -> None:
    aug = {k: v for k, v in AUGMENT.items() if k != "scale"}  # no scale jitter: one output size
    cfg = ShapesData(dataset="shapes", num_images=24, image_size=(32, 32), augment=aug, cache="device")
    data = build_data(cfg, cache_dir=tmp_path / "data")
    small, large = aten_ops(data.train, 16), aten_ops(data.train, 64)
    assert large <= small + 40, (small, large)  # per sample, it would be about 4 x small

"""The Otsu reference (report.reference: otsu): the threshold, the fitted polarity, the table row."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from stitch.config import parse_experiment
from stitch.data import DataBundle
from stitch.data.common import SegDataset
from stitch.errors import StitchError
from stitch.reference import otsu_reference, otsu_threshold
from stitch.report import reference_row
from stitch.report.table import Column


def brute_force_otsu(v: np.ndarray) -> float:
    """The cut between sorted distinct values with the largest between-class variance."""
    best, cut = -1.0, float(v.min())
    for t in np.unique(v)[:-1]:
        a, b = v[v <= t], v[v > t]
        between = a.size * b.size * (a.mean() - b.mean()) ** 2
        if between > best:
            best, cut = between, float(t)
    return cut


def test_threshold_splits_two_modes_as_exhaustive_search_does() -> None:
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0.2, 0.05, 4000), rng.normal(0.8, 0.05, 1000)])
    t = otsu_threshold(v)
    assert v[:4000].max() <= t < v[4000:].min()  # in the gap between the modes (every cut there is as good)
    assert ((v > t) == (np.arange(v.size) >= 4000)).all()
    small = np.concatenate([[0, 255], rng.integers(0, 256, 300)]).astype(float)  # one integer per bin
    exact = brute_force_otsu(small)
    assert ((small > otsu_threshold(small, bins=256)) == (small > exact)).all()
    assert otsu_threshold(np.full(10, 3.0)) == 3.0


class _Source:
    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray]) -> None:
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        return f"s{i}"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[i], self.masks[i]


def _identity(img: Any, msk: Any) -> tuple[Any, Any]:
    return img.float(), msk


def blobs(n: int, seed: int, bright: bool, classes: int = 2) -> tuple[_Source, float]:
    """Square blobs (label 1) on a background, separable by one threshold; the fg fraction."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        m = np.zeros((32, 32), np.int64)
        y, x = rng.integers(0, 20, 2)
        m[y : y + 10, x : x + 10] = 1
        fg, bg = (0.8, 0.2) if bright else (0.2, 0.8)
        img = np.where(m == 1, fg, bg) + rng.uniform(-0.1, 0.1, m.shape)
        images.append(img[:, :, None].astype(np.float32))
        masks.append(m if classes == 2 else np.minimum(m * 2, classes - 1))
    return _Source(images, masks), 100 / 1024


def bundle(bright: bool, classes: int = 2) -> DataBundle:
    train, _ = blobs(6, 0, bright, classes)
    val, _ = blobs(3, 1, bright, classes)
    test, _ = blobs(4, 2, bright, classes)
    return DataBundle(
        train=SegDataset(train, _identity, "train"),
        val=SegDataset(val, _identity, "val"),
        test=SegDataset(test, _identity, "test"),
        num_classes=classes,
        in_channels=1,
        class_names=[str(i) for i in range(classes)],
        ignore_index=255,
        mean=(0.0,),
        std=(1.0,),
    )


@pytest.mark.parametrize("bright", [True, False])
def test_otsu_reference_separates_generated_blobs_either_polarity(bright: bool) -> None:
    ref = otsu_reference(bundle(bright))
    assert ref.foreground_above is bright and 0.3 <= ref.threshold < 0.7
    assert ref.split == "val"
    on_test = otsu_reference(bundle(bright), "test")
    assert on_test.split == "test" and on_test.threshold == ref.threshold  # fitted on train either way
    assert ref.metrics["miou"] == pytest.approx(1.0) and ref.metrics["fg_iou"] == pytest.approx(1.0)


def test_otsu_reference_needs_binary_segmentation() -> None:
    with pytest.raises(StitchError, match="needs binary segmentation"):
        otsu_reference(bundle(True, classes=3))


def test_reference_row_in_the_table_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "name: x\ntask: segmentation\nbaseline: {model: unet}\nreport: {reference: otsu, decimals: 1}\n"
    exp = SimpleNamespace(cfg=parse_experiment(text).cfg)
    monkeypatch.setattr(reference_row, "experiment_data", lambda e: (e, bundle(True)))
    res: Any = SimpleNamespace(
        exp=exp, metrics=["miou", "fg_iou"], scale={"miou": 100.0, "fg_iou": 100.0}, split="test"
    )
    res.name = "x"
    columns = [Column("variant", "Variant", "Variant", "l"), Column("check:CA", "CA", "CA")]
    columns += [Column("metric:miou", "mIoU", "mIoU"), Column("metric:fg_iou", "fg IoU", "fg IoU")]
    rows, sentence = reference_row.reference_rows(res, columns)
    (row,) = rows
    assert set(row.cells) == {c.key for c in columns}
    assert row.cells["variant"].text == "Otsu threshold (no training)"
    assert row.cells["metric:miou"].text == "100.0" and row.cells["check:CA"].text == ""
    assert "Otsu" in sentence and "scored on the test split" in sentence  # the split the table reports
    res.split = "val"
    assert "scored on the val split" in reference_row.reference_rows(res, columns)[1]
    exp.cfg = parse_experiment(text.replace("reference: otsu, ", "")).cfg
    assert reference_row.reference_rows(res, columns) == ([], "")

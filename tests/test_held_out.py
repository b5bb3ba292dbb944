"""The held-out test split: evaluated after training only, never chooses anything, and what the
tables report (the split, the epoch ``report.selection`` names, the caption, the CSV)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from yaml_snippets import tiny_shapes_unet

import stitch.run
from stitch.config import load_experiment
from stitch.data import build_data
from stitch.data.common import SegDataset
from stitch.report import write_report
from stitch.report.results import load_results
from stitch.run import run_experiment
from stitch.store import ADDED_COLUMNS, ResultStore
from stitch.tasks.metrics import ConfusionMatrix, confusion_scores, metrics_from_confusion

#: the runs' own reports are not read here (the tables tests write theirs with write_report)
pytestmark = pytest.mark.usefixtures("no_report")


def experiment(tmp_path: Path, extra: str = "", seeds: str = "[0]", epochs: int = 3) -> Path:
    """Baseline and +SE on 16 shapes images (8 train, 4 val, 4 test)."""
    text = tiny_shapes_unet("held", tmp_path / "data", epochs) + textwrap.dedent(f"""\
        insertions:
          - {{name: SE, module: SE, at: "enc*"}}
        seeds: {seeds}
        report: {{formats: [markdown, csv]}}
        """)
    path = tmp_path / "held.yaml"
    path.write_text(text + textwrap.dedent(extra))
    return path


def untimed(history: list[dict]) -> list[dict]:
    """A run's history without its wall-clock figures."""
    return [{k: v for k, v in e.items() if k not in ("seconds", "train_images_per_s")} for e in history]


class ShuffledMasks:
    """A source whose masks are another sample's, flipped, with the classes relabelled (test
    labels that make no sense)."""

    def __init__(self, source) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def name(self, i: int) -> str:
        return self.source.name(i)

    def load(self, i: int):
        image, _ = self.source.load(i)
        _, mask = self.source.load((i + 1) % len(self.source))
        return image, np.ascontiguousarray(np.where(mask < 3, (mask + 1) % 3, mask)[::-1])


def test_selection_depends_on_val_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = load_experiment(experiment(tmp_path))
    plain = run_experiment(exp, out=tmp_path / "plain", quiet=True)

    real = stitch.run.experiment_data

    def shuffled_test(e):
        fitted, data = real(e)
        data.test = SegDataset(ShuffledMasks(data.test.source), data.test.transform, "test")
        return fitted, data

    monkeypatch.setattr(stitch.run, "experiment_data", shuffled_test)
    shuffled = run_experiment(exp, out=tmp_path / "shuffled", quiet=True)
    for a, b in zip(plain, shuffled):
        assert a.run_id == b.run_id and a.status == b.status == "done"
        assert (a.best_epoch, a.best_value) == (b.best_epoch, b.best_value)
        assert untimed(a.history) == untimed(b.history)
        assert a.test_best_metrics["epoch"] == a.best_epoch and a.test_last_metrics["epoch"] == 3
        assert (
            a.test_best_metrics["images"] == 4
            and "loss" in a.test_best_metrics
            and not any(k.startswith("val_") for k in a.test_best_metrics)
        )
        assert a.test_best_metrics["miou"] != b.test_best_metrics["miou"]  # the test labels did change
        per_image = a.test_per_image["best"]
        assert len(per_image) == 4 and np.asarray(per_image).shape == (4, 3, 3)
        pooled = torch.tensor(per_image).sum(0)
        assert metrics_from_confusion(pooled)["miou"] == pytest.approx(a.test_best_metrics["miou"])


class WeightTask:
    """Scores a model by the sum of its weights (so each checkpoint has its own score)."""

    def evaluate(self, model, batches, device, per_image=False):
        for _ in batches:
            pass
        return {"score": float(sum(p.detach().sum() for p in model.parameters()))}


def test_evaluate_test_scores_the_chosen_and_the_last_weights(tmp_path: Path) -> None:
    from stitch.held_out import evaluate_test

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0), model.bias.fill_(0.0)
    torch.save(
        {"model": {k: v * 0 + 0.25 for k, v in model.state_dict().items()}, "epoch": 2}, tmp_path / "best.pt"
    )
    test_set = [torch.zeros(2)] * 3
    out = evaluate_test(model, WeightTask(), test_set, torch.device("cpu"), tmp_path, 2, 5, batch_size=2)
    assert out["test_best_metrics"] == {"score": 0.75, "images": 3, "epoch": 2}
    assert out["test_last_metrics"] == {"score": 2.0, "images": 3, "epoch": 5}
    assert out["test_per_image"] is None
    assert model.weight.tolist() == [[1.0, 1.0]]  # the last weights are back
    same = evaluate_test(model, WeightTask(), test_set, torch.device("cpu"), tmp_path, 5, 5, batch_size=2)
    assert same["test_best_metrics"] == same["test_last_metrics"]  # chosen epoch = last: one evaluation
    none = evaluate_test(model, WeightTask(), test_set, torch.device("cpu"), tmp_path, None, 5, batch_size=2)
    assert none["test_best_metrics"] is None and none["test_last_metrics"]["score"] == 2.0  # nothing chosen


def test_the_chosen_weights_are_never_replaced_by_others(tmp_path: Path) -> None:
    from stitch.held_out import HeldOutError, evaluate_test

    model = torch.nn.Linear(2, 1)
    args = (model, WeightTask(), [torch.zeros(2)], torch.device("cpu"), tmp_path)
    with pytest.raises(HeldOutError, match="best.pt: missing, so epoch 2 cannot be tested; run the command"):
        evaluate_test(*args, 2, 5, batch_size=1)
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "best.pt")
    with pytest.raises(HeldOutError, match="holds epoch 3, but validation chose epoch 2"):
        evaluate_test(*args, 2, 5, batch_size=1)


def test_a_broken_test_sample_stops_the_command_before_training(tmp_path: Path, capsys) -> None:
    from PIL import Image

    from stitch.cli import main

    path = experiment(tmp_path)
    data = build_data(load_experiment(path).cfg.data)
    bad = data.test.source.pairs[-1][1]  # the last test image's mask
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(bad)
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "outside the class range" in err and str(bad) in err
    assert not (tmp_path / "runs").exists()


def test_tables_report_test_at_the_chosen_epoch(tmp_path: Path) -> None:
    path = experiment(tmp_path, seeds="[0, 1, 2]", epochs=3)
    rows = run_experiment(load_experiment(path), out=tmp_path / "runs", quiet=True)
    run_dir = tmp_path / "runs" / "held"
    res = load_results(run_dir, costs=False)
    assert (res.split, res.selection, res.split_images, res.source) == (
        "test",
        "best",
        4,
        "test_best_metrics",
    )
    base = res.reference
    assert base.values("miou") == {
        r.seed: r.test_best_metrics["miou"] for r in rows if r.variant == "Baseline"
    }
    write_report([run_dir], tmp_path / "rep", costs=False)
    md = (tmp_path / "rep" / "ablation.md").read_text()
    assert (
        "Metrics on the held-out test split (4 images), each run at its epoch with the best validation mIoU"
        in md
    )
    csv = pd.read_csv(tmp_path / "rep" / "ablation.csv")
    se = csv[csv["variant"] == "+SE"].iloc[0]
    assert {
        "miou_seed0",
        "miou_diff_ci_low",
        "miou_diff_boot_images_low",
        "miou_diff_boot_images_high",
    } <= set(csv)
    assert se["miou_diff_boot_images_low"] <= se["miou_diff"] <= se["miou_diff_boot_images_high"]
    assert "over seeds and over seeds x test images" in md

    # report.selection: last reads the last epoch's test metrics
    text = path.read_text().replace(
        "report: {formats: [markdown, csv]}", "report: {formats: [markdown], selection: last}"
    )
    (run_dir / "experiment.yaml").write_text(text)
    last = load_results(run_dir, costs=False)
    assert last.source == "test_last_metrics"
    assert last.reference.values("miou") == {
        r.seed: r.test_last_metrics["miou"] for r in rows if r.variant == "Baseline"
    }
    write_report([run_dir], tmp_path / "rep_last", costs=False)
    assert (
        "each run at the last epoch (report.selection: last)"
        in (tmp_path / "rep_last" / "ablation.md").read_text()
    )


def test_without_a_test_split_the_caption_says_val_chose_the_epoch(tmp_path: Path) -> None:
    path = experiment(tmp_path, epochs=2)
    path.write_text(path.read_text().replace("  num_classes: 3\n", "  num_classes: 3\n  test_fraction: 0\n"))
    rows = run_experiment(load_experiment(path), out=tmp_path / "runs", quiet=True)
    assert all(r.test_best_metrics is None and r.test_per_image is None for r in rows)
    write_report([tmp_path / "runs" / "held"], tmp_path / "rep", costs=False)
    md = (tmp_path / "rep" / "ablation.md").read_text()
    assert "no held-out test split, so the reported split also chose the epoch" in md


def test_older_databases_get_the_test_columns(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "runs.sqlite"
    with ResultStore(db):
        pass
    con = sqlite3.connect(db)
    for column in ADDED_COLUMNS:
        con.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    con.commit()
    con.close()
    with ResultStore(db) as store:
        columns = {r[1] for r in store._conn.execute("PRAGMA table_info(runs)")}
    assert set(ADDED_COLUMNS) <= columns


def test_batched_confusion_scores_match_one_at_a_time() -> None:
    rng = np.random.default_rng(0)
    mats = torch.from_numpy(rng.integers(0, 50, size=(5, 3, 3)))
    mats[2, 1] = 0
    mats[2, :, 1] = 0  # class 1 absent: NaN in its per-class values, left out of the means
    batched = confusion_scores(mats)
    for i in range(5):
        one = metrics_from_confusion(mats[i])
        for key in ("miou", "mdice", "mprecision", "mrecall", "pixel_acc", "fg_iou", "fg_dice"):
            assert float(batched[key][i]) == pytest.approx(one[key], nan_ok=True)
    cm = ConfusionMatrix(3)
    cm.matrix += mats[0]
    assert cm.compute()["tp"] == mats[0].diagonal().tolist()

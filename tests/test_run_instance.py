"""`stitch run` for the instance task: a tiny Mask R-CNN on generated `shapes` instances."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from stitch.cli import main
from stitch.config import load_experiment
from stitch.run import run_experiment
from stitch.store import ResultStore

LOSS_PARTS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


def tiny_instance(tmp_path: Path, epochs: int = 1, insertions: str = "", name: str = "tiny_instance") -> Path:
    """Mask R-CNN (ResNet-18-FPN, 64 px, few proposals) on 8 generated 64x64 images (6 train / 2 val)."""
    text = textwrap.dedent(f"""\
        name: {name}
        task: instance
        baseline:
          model: maskrcnn
          args: {{backbone: resnet18, norm: bn, min_size: 64, max_size: 64, anchor_sizes: [8, 16, 32, 64, 128],
                  rpn_post_nms_top_n_train: 100, rpn_post_nms_top_n_test: 50, box_batch_size_per_image: 32,
                  box_detections_per_img: 20}}
        data:
          dataset: shapes
          root: {tmp_path / 'data'}
          num_images: 8
          image_size: [64, 64]
          num_classes: 3
        train:
          epochs: {epochs}
          batch_size: 2
          optimizer: {{name: sgd, lr: 0.005}}
          clip_grad_norm: 10.0
          deterministic: true
        seeds: [0]
        metrics: {{primary: segm_ap, report: [segm_ap, bbox_ap]}}
    """)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text + textwrap.dedent(insertions))
    return path


def test_instance_run_writes_coco_metrics_losses_report_and_show(tmp_path: Path, capsys) -> None:
    exp_path = tiny_instance(tmp_path, insertions="""\
        insertions:
          - {name: BU, module: BottomUpPath, at: fpn, mode: after}
        ablation: one-at-a-time
    """)
    assert main(["run", str(exp_path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "instance task" in out  # the data line counts objects
    run_dir = tmp_path / "runs" / "tiny_instance"
    with ResultStore(run_dir / "runs.sqlite") as store:
        rows = store.rows()
    assert [(r.variant, r.status) for r in rows] == [("Baseline", "done"), ("+BU", "done")]
    for r in rows:
        for key in ("segm_ap", "segm_ap50", "segm_ap75", "segm_ar", "bbox_ap", "bbox_ap50", "bbox_ar"):
            v = r.final_metrics[key]
            assert math.isnan(v) or 0.0 <= v <= 1.0
        record = r.history[-1]
        assert all(math.isfinite(record[f"train_{p}"]) for p in LOSS_PARTS)
        assert r.config["baseline"]["args"]["num_classes"] == 3  # filled from the data (background + 2 shapes)
        assert "in_channels" not in r.config["baseline"]["args"]  # Mask R-CNN's builder takes none
    assert rows[1].params > rows[0].params
    report = (run_dir / "report" / "ablation.md").read_text()
    assert "Mask AP" in report and "Box AP" in report and "BU" in report
    assert "best_segm_ap" in (run_dir / "results.csv").read_text().splitlines()[0]
    tags = set()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in (run_dir / "tb").iterdir():
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])
    assert {"train/loss_mask", "train_step/loss_mask", "val/segm_ap", "val/input_target_prediction"} <= tags

    png = tmp_path / "show.png"
    assert main(["show", str(run_dir), "--variant", "+BU", "--n", "2", "--output", str(png)]) == 0
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 3 * 64 and im.size[1] > 2 * 64  # 2 rows of (image, truth, prediction)


def test_instance_run_resumes_exactly(tmp_path: Path) -> None:
    """Stopped after one epoch and resumed = run straight through (same losses and AP)."""
    straight = run_experiment(load_experiment(tiny_instance(tmp_path, epochs=2, name="straight")), out=tmp_path / "a", quiet=True)
    exp = tiny_instance(tmp_path, epochs=2, name="straight")
    run_experiment(load_experiment(exp), out=tmp_path / "b", quiet=True, stop_after=1)
    resumed = run_experiment(load_experiment(exp), out=tmp_path / "b", quiet=True)
    a, b = straight[0], resumed[0]
    assert b.status == "done" and b.epochs_done == 2

    def clean(history):  # timings differ; NaN (an undefined AP) never equals itself
        drop = ("seconds", "train_images_per_s")
        return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in h.items() if k not in drop} for h in history]

    assert clean(a.history) == clean(b.history)


def test_instance_task_refuses_a_dataset_without_objects(tmp_path: Path, capsys) -> None:
    exp_path = tiny_instance(tmp_path)
    exp_path.write_text(exp_path.read_text().replace("dataset: shapes", "dataset: brain").replace("  num_images: 8\n", "").replace("  num_classes: 3\n", ""))
    assert main(["run", str(exp_path), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "instance" in err
    assert not (tmp_path / "runs").exists()

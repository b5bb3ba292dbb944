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
          root: {tmp_path / "data"}
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


@pytest.mark.usefixtures("quick_latency")  # the report is read, not its timings
def test_instance_run_writes_coco_metrics_losses_report_and_show(tmp_path: Path, capsys) -> None:
    exp_path = tiny_instance(
        tmp_path,
        insertions="""\
        insertions:
          - {name: BU, module: BottomUpPath, at: fpn, mode: after}
        ablation: one-at-a-time
    """,
    )
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
        assert (
            r.config["baseline"]["args"]["num_classes"] == 3
        )  # filled from the data (background + 2 shapes)
        assert "in_channels" not in r.config["baseline"]["args"]  # Mask R-CNN's builder takes none
    assert rows[1].params > rows[0].params
    report = (run_dir / "report" / "ablation.md").read_text()
    assert "Mask AP" in report and "Box AP" in report and "BU" in report
    assert "best_segm_ap" in (run_dir / "results.csv").read_text().splitlines()[0]
    tags = set()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in (run_dir / "tb").glob("*/*"):  # each run's step/ and epoch/ (issue 15's tags)
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])
    assert {
        "epoch/train_loss_mask",
        "train/loss_mask_step",
        "epoch/val_segm_ap",
        "epoch/val_predictions",
    } <= tags

    png = tmp_path / "show.png"
    assert main(["show", str(run_dir), "--variant", "+BU", "--n", "2", "--output", str(png)]) == 0
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 3 * 64 and im.size[1] > 2 * 64  # 2 rows of (image, truth, prediction)


@pytest.mark.usefixtures("no_report")  # the runs are compared, not their reports
def test_instance_run_resumes_exactly(tmp_path: Path) -> None:
    """Stopped after one epoch and resumed = run straight through (same losses and AP)."""
    straight = run_experiment(
        load_experiment(tiny_instance(tmp_path, epochs=2, name="straight")), out=tmp_path / "a", quiet=True
    )
    exp = tiny_instance(tmp_path, epochs=2, name="straight")
    run_experiment(load_experiment(exp), out=tmp_path / "b", quiet=True, stop_after=1)
    resumed = run_experiment(load_experiment(exp), out=tmp_path / "b", quiet=True)
    a, b = straight[0], resumed[0]
    assert b.status == "done" and b.epochs_done == 2

    def clean(history):  # timings differ; NaN (an undefined AP) never equals itself
        drop = ("seconds", "train_images_per_s")
        return [
            {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in h.items() if k not in drop}
            for h in history
        ]

    assert clean(a.history) == clean(b.history)


def test_instance_task_refuses_a_dataset_without_objects(tmp_path: Path, capsys) -> None:
    exp_path = tiny_instance(tmp_path)
    exp_path.write_text(
        exp_path.read_text()
        .replace("dataset: shapes", "dataset: brain")
        .replace("  num_images: 8\n", "")
        .replace("  num_classes: 3\n", "")
    )
    assert main(["run", str(exp_path), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "instance" in err
    assert not (tmp_path / "runs").exists()


def test_augment_scale_is_refused_for_the_instance_task_with_the_fix(tmp_path: Path, capsys) -> None:
    exp_path = tiny_instance(tmp_path)
    exp_path.write_text(
        exp_path.read_text().replace(
            "  num_classes: 3\n", "  num_classes: 3\n  augment: {scale: [0.5, 1.5]}\n"
        )
    )
    assert main(["validate", str(exp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.augment.scale" in err and "min_size a list" in err


def test_multi_scale_min_size_draws_per_batch_in_training_and_uses_the_last_in_eval() -> None:
    import torch

    from stitch.baselines.maskrcnn import build_maskrcnn

    model = build_maskrcnn("resnet18", num_classes=2, min_size=[48, 64, 80], max_size=200)
    model.transform.train()
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        images, _ = model.transform([torch.rand(3, 32, 32)])
        seen.add(images.image_sizes[0][1])  # before padding to a multiple of 32
    assert seen == {48, 64, 80}
    model.transform.eval()
    assert model.transform([torch.rand(3, 32, 32)])[0].image_sizes[0] == (80, 80)
    with pytest.raises(ValueError, match="min_size"):
        build_maskrcnn("resnet18", num_classes=2, min_size=[64, 0])


def test_the_voc_objects_folder_does_not_change_segmentation_run_ids() -> None:
    from stitch.config import parse_experiment
    from stitch.plan import plan_variants
    from stitch.runs import resolved_config

    text = (
        "name: v\ntask: {task}\nbaseline: {{model: {model}}}\ndata: {{dataset: voc, root: /data/VOC2012}}\n"
    )
    seg = parse_experiment(text.format(task="segmentation", model="unet"))
    assert "objects" not in resolved_config(seg, plan_variants(seg.cfg)[0], 0, 1)["data"]
    inst = parse_experiment(text.format(task="instance", model="maskrcnn"))
    assert resolved_config(inst, plan_variants(inst.cfg)[0], 0, 1)["data"]["objects"] == "SegmentationObject"


def test_the_readme_coco_recipe_is_the_example_with_its_starred_lines_replaced() -> None:
    """The README's full-scale recipe: the (*) lines of experiments/maskrcnn_panet.yaml swapped for
    the README's, and the result is a valid experiment with the 1x schedule on COCO 2017."""
    import re

    from stitch.config import parse_experiment

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Mask R-CNN and PANet") : readme.index("## Architecture")]
    recipe = re.search(r"```yaml\n(.*?)```", section, re.S).group(1).splitlines()
    example = (root / "experiments" / "maskrcnn_panet.yaml").read_text().splitlines()
    starred = [i for i, line in enumerate(example) if line.rstrip().endswith("# (*)")]
    assert len(starred) == len(recipe) == 3
    for i, line in zip(starred, recipe):
        assert line.split(":")[0] == example[i].split(":")[0]  # the same key, replaced in place
        example[i] = line
    cfg = parse_experiment("\n".join(example) + "\n").cfg
    assert cfg.baseline.args["backbone"] == "resnet50" and cfg.data.dataset == "coco"
    assert cfg.data.train_annotations == "annotations/instances_train2017.json"
    assert cfg.train.scheduler.milestones == [8, 11] and cfg.train.epochs == 12
    assert cfg.train.batch_size * cfg.train.grad_accum == 16

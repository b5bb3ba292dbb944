"""TensorBoard as a user opens it: the event files read back with tensorboard's EventAccumulator
(step and epoch axes, HParams, the purge on resume, a sweep trial's folder name)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter
from yaml_snippets import tiny_shapes_unet

from stitch.config import load_experiment
from stitch.plan import Variant
from stitch.progress import Progress
from stitch.runs import RunPlan, experiment_data, open_run_dir, plan_runs, run_logger
from stitch.session import RunSession
from stitch.store import ResultStore, RunRow
from stitch.tasks import make_task
from stitch.tensorboard_log import run_name


def experiment(tmp_path: Path, epochs: int = 2, extra: str = "", name: str = "tb_run") -> Path:
    """A baseline-only tiny U-Net: 8 training images in micro-batches of 4, two per optimiser
    step, so each epoch is one optimiser step of two micro-steps."""
    text = tiny_shapes_unet(name, tmp_path / "data", epochs) + "  grad_accum: 2\nseeds: [0]\n" + extra
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def train(path: Path, out: Path, stop_after: int | None = None) -> tuple[RunRow, Path]:
    """The one run of ``path`` trained through the session ``stitch run`` uses (without the
    report, for time); its row and TensorBoard folder."""
    exp, data = experiment_data(load_experiment(path))
    [plan] = plan_runs(exp)
    run_dir = open_run_dir(exp, out)
    task = make_task(exp.cfg.task, data, exp.cfg.train.loss)
    with (
        ResultStore(run_dir / "runs.sqlite") as store,
        Progress(quiet=True, log=run_logger(run_dir)) as progress,
    ):
        session = RunSession(exp, data, task, store, torch.device("cpu"), run_dir, progress)
        row = session.train(plan, stop_after=stop_after)
    return row, run_dir / "tb" / run_name(plan)


def read(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc


def steps_of(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def test_steps_and_epochs_on_their_own_axes_and_the_config_in_hparams(tmp_path: Path) -> None:
    row, tb = train(experiment(tmp_path), tmp_path / "runs")
    assert [p.name for p in tb.parent.iterdir()] == [tb.name]
    assert tb.name == f"baseline_s0_{row.run_id[:8]}"

    step = read(tb / "step")  # per optimiser step: 2 epochs x 1 step (2 micro-steps each)
    assert set(step.Tags()["scalars"]) == {"train/loss_step", "train/lr"}
    assert steps_of(step, "train/loss_step") == steps_of(step, "train/lr") == [1, 2]
    lrs = [e.value for e in step.Scalars("train/lr")]
    # events hold float32: the values as stored, to float32's precision
    assert lrs[0] == pytest.approx(row.config["train"]["optimizer"]["lr"], rel=1e-6)  # step 1: cosine from lr
    assert lrs[1] == pytest.approx(row.history[0]["lr"], rel=1e-6)  # step 2: the rate epoch 1 ended at
    # one step per epoch: its loss is the epoch's (the mean of its two equal micro-batches)
    assert step.Scalars("train/loss_step")[0].value == pytest.approx(row.history[0]["train_loss"], rel=1e-6)

    epoch = read(tb / "epoch")
    scalars = set(epoch.Tags()["scalars"])
    assert {"epoch/train_loss", "epoch/lr", "epoch/val_loss", "epoch/val_miou"} <= scalars
    assert "epoch_class_iou/circle" in scalars and not any("val/val" in t for t in scalars)
    assert all(steps_of(epoch, tag) == [1, 2] for tag in scalars)
    assert epoch.Tags()["images"] == ["epoch/val_predictions"]

    session = read(tb)  # the run's folder: the HParams session, written once at the end
    content = session.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["train.optimizer.name"].string_value == row.config["train"]["optimizer"]["name"]
    assert hp["train.grad_accum"].number_value == 2 and hp["variant"].string_value == "Baseline"
    assert "data.image_size" in hp and "seed" in hp
    metrics = set(session.Tags()["scalars"])
    assert {"final/miou", "final/val_loss", "best/miou", "test/miou"} <= metrics
    assert row.final_metrics is not None
    assert session.Scalars("final/miou")[0].value == pytest.approx(row.final_metrics["miou"], rel=1e-6)


def test_a_resumed_run_drops_what_was_logged_after_its_checkpoint_and_writes_hparams_once(
    tmp_path: Path,
) -> None:
    """Stopped after epoch 1; events a killed run logged beyond it (epoch 2, steps 2-3, value 99)
    are purged when the run resumes: each step and epoch once, with the resumed run's values."""
    path = experiment(tmp_path, epochs=3)
    row, tb = train(path, tmp_path / "runs", stop_after=1)
    assert row.epochs_done == 1
    assert not list(tb.glob("events.out.tfevents.*"))  # no HParams before the run ends
    for sub, tag, stale in (("step", "train/loss_step", (2, 3)), ("epoch", "epoch/train_loss", (2,))):
        with SummaryWriter(str(tb / sub)) as orphan:
            for s in stale:
                orphan.add_scalar(tag, 99.0, s)
    assert train(path, tmp_path / "runs")[0].status == "done"

    step, epoch = read(tb / "step"), read(tb / "epoch")
    assert steps_of(step, "train/loss_step") == steps_of(step, "train/lr") == [1, 2, 3]
    assert steps_of(epoch, "epoch/train_loss") == steps_of(epoch, "epoch/val_miou") == [1, 2, 3]
    assert 99.0 not in [
        e.value for e in [*step.Scalars("train/loss_step"), *epoch.Scalars("epoch/train_loss")]
    ]
    assert len(list(tb.glob("events.out.tfevents.*"))) == 1  # the HParams session, once
    assert "_hparams_/session_start_info" in read(tb).PluginTagToContent("hparams")


def test_a_sweep_trial_folder_names_its_chosen_configuration_safely_and_capped() -> None:
    """A trial's variant (``trial <n>``, stitch.sweep.trial) gets its insertions in its name."""
    config = {
        "insertions": [
            {"name": "A", "module": "CBAM", "mode": "after", "at": "enc1"},
            {"name": "B", "module": "SE", "mode": "parallel", "at": ["dec*", "enc 2/x"]},
        ]
    }
    plan = RunPlan(Variant("trial 3", ("A", "B")), 0, "0123456789abcdef", config)
    assert run_name(plan) == "trial-3_CBAM-after-enc1_SE-parallel-dec-+enc-2-x_s0_01234567"
    long = {"insertions": [{"name": "A", "module": "M" * 300, "at": "enc1"}]}
    name = run_name(RunPlan(Variant("trial 12", ("A",)), 1, "f" * 16, long))
    assert (
        name.startswith("trial-12_MMM")
        and name.endswith("_s1_ffffffff")
        and len(name) <= 80 + len("_s1_ffffffff")
    )
    plain = RunPlan(Variant("+CA +CGA", ("CA", "CGA")), 2, "a" * 16, {"insertions": []})
    assert run_name(plain) == "ca+cga_s2_aaaaaaaa"  # an ablation's variant keeps its slug

"""`stitch run` end to end on tiny generated data: results, resume, skip, learning, show."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
from yaml_snippets import tiny_shapes_unet

from stitch.cli import main
from stitch.config import load_experiment, parse_experiment
from stitch.engine import lr_factor
from stitch.run import run_experiment
from stitch.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]


def tiny(tmp_path: Path, extra: str = "", epochs: int = 2, name: str = "tiny_run") -> Path:
    """A two-variant experiment on 16 generated 32x32 images (cached under tmp_path)."""
    text = (
        tiny_shapes_unet(name, tmp_path / "data", epochs)
        + textwrap.dedent("""\
          keep_last: 2
        insertions:
          - {name: SE, module: SE, at: "enc*"}
        seeds: [0]
    """)
        + textwrap.dedent(extra)
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_end_to_end_two_variants_write_every_output(tmp_path: Path, capsys) -> None:
    exp_path = tiny(tmp_path, epochs=3)
    code = main(["run", str(exp_path), "--out", str(tmp_path / "runs"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    run_dir = tmp_path / "runs" / "tiny_run"
    with ResultStore(run_dir / "runs.sqlite") as store:
        rows = store.rows()
    assert [(r.variant, r.seed, r.status, r.epochs_done) for r in rows] == [
        ("Baseline", 0, "done", 3),
        ("+SE", 0, "done", 3),
    ]
    for r in rows:
        assert len(r.history) == 3 and r.best_metrics and r.final_metrics
        assert {"miou", "mdice", "fg_iou", "pixel_acc", "tp", "fp", "fn", "tn"} <= set(r.final_metrics)
        assert r.params > 0 and r.wall_time > 0 and r.train_images_per_s > 0
        ckpts = sorted(p.name for p in (run_dir / "ckpt" / r.run_id).iterdir())
        assert ckpts == ["best.pt", "epoch-0002.pt", "epoch-0003.pt"]  # keep_last 2, and the best
    assert rows[1].params - rows[1].baseline_params == rows[1].params - rows[0].params > 0
    assert (run_dir / "experiment.yaml").read_text() == exp_path.read_text()
    csv = (run_dir / "results.csv").read_text().splitlines()
    assert len(csv) == 3 and "best_miou" in csv[0] and "final_fg_iou" in csv[0]
    assert "epoch 3/3" in (run_dir / "log.txt").read_text()
    events = list((run_dir / "tb").rglob("events.out.tfevents.*"))
    assert len(events) == 6  # per run: step/, epoch/ and the HParams session (issue 15)
    assert "Baseline" in out and "+SE" in out and "1/1 done" in out

    # running again trains nothing
    before = {r.run_id: r.updated_at for r in rows}
    assert main(["run", str(exp_path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    assert capsys.readouterr().out.count("already done, skipped") == 2
    with ResultStore(run_dir / "runs.sqlite") as store:
        assert {r.run_id: r.updated_at for r in store.rows()} == before

    # stitch show writes a PNG grid from the best checkpoint
    assert main(["show", str(run_dir), "--variant", "+SE", "--n", "3"]) == 0
    png = run_dir / "show_se_s0.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.usefixtures("no_report")  # the runs are checked, not their reports
def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    exp = load_experiment(tiny(tmp_path, epochs=4))
    straight = run_experiment(exp, out=tmp_path / "a", quiet=True)
    part = run_experiment(exp, out=tmp_path / "b", quiet=True, stop_after=2)
    assert {r.status for r in part} == {"running"} and {r.epochs_done for r in part} == {2}
    resumed = run_experiment(exp, out=tmp_path / "b", quiet=True)
    for a, b in zip(straight, resumed):
        assert b.status == "done" and b.epochs_done == 4
        assert a.final_metrics == b.final_metrics  # identical, not just close
        assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


@pytest.mark.usefixtures("no_report")  # the runs are checked, not their reports
def test_force_retrains_and_a_diverging_run_is_marked(tmp_path: Path) -> None:
    exp = load_experiment(tiny(tmp_path, epochs=2, extra="", name="div"))
    exp.cfg.train.optimizer.name = "sgd"
    exp.cfg.train.optimizer.lr = 1e12
    exp.cfg.train.loss = "ce"
    rows = run_experiment(exp, out=tmp_path / "runs", quiet=True)
    assert {r.status for r in rows} == {"diverged"}
    assert all("training loss is" in r.error for r in rows)
    again = run_experiment(exp, out=tmp_path / "runs", quiet=True)
    assert [r.updated_at for r in again] == [r.updated_at for r in rows]  # diverged is a result: kept
    forced = run_experiment(exp, out=tmp_path / "runs", quiet=True, force=True)
    assert all(f.updated_at > r.updated_at for f, r in zip(forced, rows))


@pytest.mark.usefixtures("no_report")  # the runs are checked, not their reports
def test_a_small_unet_learns_the_shapes(tmp_path: Path) -> None:
    """Binary shapes (circles on noisy gradients): foreground IoU above 0.6 after 120 steps."""
    exp = load_experiment(tiny(tmp_path, name="learn", epochs=30, extra=""))
    cfg = exp.cfg
    cfg.insertions.clear()
    cfg.data.num_images, cfg.data.num_classes, cfg.data.image_size = 40, 2, (64, 64)
    cfg.data.test_fraction = 0.0  # 30 train, 10 val, as when this test was written
    cfg.baseline.args["base_width"] = 8
    cfg.train.batch_size = 8
    cfg.train.optimizer.lr = 3e-3
    cfg.train.loss = "ce+dice"
    (row,) = run_experiment(exp, out=tmp_path / "runs", quiet=True)
    steps = cfg.train.epochs * math.ceil(30 / cfg.train.batch_size)
    assert steps == 120
    assert row.status == "done"
    assert row.best_metrics["fg_iou"] > 0.6, row.history


def test_data_mistakes_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(
        f"name: e\ntask: segmentation\nbaseline: {{model: unet}}\ndata: {{dataset: folder, root: {tmp_path / 'nowhere'}}}\n"
    )
    code = main(["run", str(path), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "nowhere" in err
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_class_count_mismatch_is_reported_at_the_baseline(tmp_path: Path, capsys) -> None:
    path = tiny(tmp_path, name="mismatch")
    path.write_text(path.read_text().replace("{base_width: 4}", "{base_width: 4, num_classes: 5}"))
    code = main(["run", str(path), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert (
        code == 2
        and "baseline.args.num_classes: num_classes=5 but the shapes data has 3 (set num_classes: 3)" in err
    )


@pytest.mark.parametrize(
    "schedule, checks",
    [
        (
            "{name: cosine, warmup_epochs: 1, min_lr: 0.0001}",
            [(0, 0.1), (9, 1.0), (10, 1.0), (99, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))],
        ),
        ("{name: step, step_size: 3, gamma: 0.5}", [(0, 1.0), (29, 1.0), (30, 0.5), (60, 0.25)]),
        (
            "{name: step, milestones: [8, 9], gamma: 0.1}",
            [(0, 1.0), (79, 1.0), (80, 0.1), (89, 0.1), (90, 0.01), (99, 0.01)],
        ),
        ("{name: poly, power: 1.0}", [(0, 1.0), (50, 0.5)]),
        ("{name: none, warmup_epochs: 2}", [(0, 0.05), (19, 1.0), (99, 1.0)]),
    ],
)
def test_learning_rate_schedules(schedule: str, checks: list[tuple[int, float]]) -> None:
    cfg = parse_experiment(
        f"name: s\ntask: segmentation\nbaseline: {{model: unet}}\ntrain: {{epochs: 10, optimizer: {{lr: 0.001}}, scheduler: {schedule}}}\n"
    ).cfg.train
    for step, expected in checks:
        assert lr_factor(step, 10, cfg) == pytest.approx(expected), step


@pytest.mark.parametrize(
    "schedule, problem",
    [
        ("{name: cosine, milestones: [3]}", "milestones are read by the 'step' schedule only"),
        ("{name: step, milestones: [5, 3]}", "milestones must be increasing"),
    ],
)
def test_bad_milestones_are_one_line_errors(schedule: str, problem: str) -> None:
    from stitch.errors import ConfigError

    with pytest.raises(ConfigError, match=problem):
        parse_experiment(
            f"name: s\ntask: segmentation\nbaseline: {{model: unet}}\ntrain: {{scheduler: {schedule}}}\n"
        )


def test_run_ids_ignore_defaults_written_out_and_keep_last(tmp_path: Path) -> None:
    from stitch.runs import plan_runs

    plain = load_experiment(tiny(tmp_path, name="ids"))
    path = tiny(tmp_path, name="ids_explicit")
    path.write_text(
        path.read_text()
        .replace("{base_width: 4}", "{base_width: 4, upsampling: transpose}")
        .replace('at: "enc*"}', 'at: "enc*", mode: after, args: {rd_ratio: 0.0625}}')
        .replace("keep_last: 2", "keep_last: 5")
        .replace("name: ids_explicit", "name: ids")
    )
    explicit = load_experiment(path)
    assert [p.run_id for p in plan_runs(plain)] == [p.run_id for p in plan_runs(explicit)]
    changed = load_experiment(tiny(tmp_path, name="ids_lr", extra=""))
    changed.cfg.train.optimizer.lr = 0.01
    assert not {p.run_id for p in plan_runs(plain)} & {p.run_id for p in plan_runs(changed)}


@pytest.mark.usefixtures("no_report")  # the runs are checked, not their reports
def test_resume_keeps_the_stored_history_until_new_epochs_arrive(tmp_path: Path) -> None:
    exp = load_experiment(tiny(tmp_path, epochs=3, name="keep"))
    run_experiment(exp, out=tmp_path / "runs", quiet=True, stop_after=2)
    with ResultStore(tmp_path / "runs" / "keep" / "runs.sqlite") as store:
        before = {r.run_id: (len(r.history), r.best_epoch, r.wall_time) for r in store.rows()}
    run_experiment(exp, out=tmp_path / "runs", quiet=True, stop_after=2)  # a session that trains nothing new
    with ResultStore(tmp_path / "runs" / "keep" / "runs.sqlite") as store:
        after = {r.run_id: (len(r.history), r.best_epoch, r.wall_time) for r in store.rows()}
    assert before == after and all(h == 2 for h, _, _ in after.values())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "foo"], "--device 'foo': use cpu, cuda or cuda:N"),
        (["--seeds", "0", "0"], "--seeds 0 0: seeds repeat"),
    ],
)
def test_run_option_mistakes_exit_2(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    code = main(["run", str(tiny(tmp_path)), "--out", str(tmp_path / "runs"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_bad_label_in_a_worker_is_one_line_and_nothing_is_written(tmp_path: Path, capsys) -> None:
    import numpy as np
    from PIL import Image

    root = tmp_path / "folder"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / "images" / f"s{i}.png")
        Image.fromarray(np.full((32, 32), 7 if i == 5 else i % 2, np.uint8)).save(
            root / "masks" / f"s{i}.png"
        )
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: bad
        task: segmentation
        baseline: {{model: unet, args: {{base_width: 4}}}}
        data: {{dataset: folder, root: {root}, num_classes: 2, image_size: 32, num_workers: 1, val_fraction: 0.5}}
        train: {{epochs: 1, batch_size: 2}}
    """)
    )
    code = main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "s5.png" in err, err
    assert not (tmp_path / "runs").exists()


def test_errors_raised_in_dataloader_workers_keep_their_own_line() -> None:
    from stitch.data import DataError
    from stitch.errors import one_line_message

    wrapped = DataError(
        'Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  File "x.py", line 1, in f\nstitch.data.common.DataError: /d/masks/s5.png: label 7 outside 0..1 (set num_classes)\n'
    )
    assert one_line_message(wrapped) == "/d/masks/s5.png: label 7 outside 0..1 (set num_classes)"


@pytest.mark.usefixtures("no_report")  # the log is checked, not the report
@pytest.mark.parametrize("key", ["amp: true", "precision: fp16"])
def test_fp16_off_cuda_trains_in_float32_and_says_so(tmp_path: Path, key: str) -> None:
    path = tiny(tmp_path, epochs=1, extra="ablation: none\n")
    path.write_text(path.read_text().replace("  keep_last: 2\n", f"  keep_last: 2\n  {key}\n"))
    exp = load_experiment(path)
    run_experiment(exp, out=tmp_path / "runs", quiet=True, device="cpu")
    log = (tmp_path / "runs" / "tiny_run" / "log.txt").read_text()
    assert "note: fp16 (train.amp, train.precision) is for CUDA; training in float32 on cpu" in log

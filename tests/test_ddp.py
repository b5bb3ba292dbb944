"""One run over 2 processes (DistributedDataParallel, gloo on the CPU), launched by torchrun: the
metrics and history of a 1-process run within tolerance, only rank 0 writes, and a run stopped
after epoch 1 resumes under DDP from the checkpoint rank 0 wrote. ``--nproc-per-node`` relaunches
the same command line under torchrun; its mistakes are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from yaml_snippets import tiny_shapes_unet

from stitch.cli import main
from stitch.distributed import RankSlice, check_ddp_options, without_nproc
from stitch.errors import StitchError
from stitch.store import ResultStore, RunRow

#: The same weights, data and global batches, but BatchNorm normalises each rank's half batch with
#: that half's statistics (and keeps rank 0's running statistics), and the all-reduce averages two
#: half-batch gradients: the training-mode losses differ from the first step (0.018 in epoch 1
#: here); the validation metrics, from the evaluation-mode model, by less than 0.001.
TRAIN_TOLERANCE, EVAL_TOLERANCE = 0.03, 0.002

#: Every rank runs this: 1 epoch (stop_after); the whole run again (a resume from the epoch-1
#: checkpoint rank 0 wrote), in which rank 1 alone gets a Ctrl-C after its first step of epoch 2
#: (both ranks must stop at the same step, rank 0 writing the mid-epoch checkpoint); once more, to
#: finish from there. A rank other than 0 records every attempt to write a file.
SCRIPT = """\
import builtins, os, shutil, signal, sys
import stitch.engine as engine
from stitch.plugins import load_experiment_with_plugins
from stitch.run import run_experiment

writes = []
if os.environ["RANK"] == "1":
    real_deliver, sent = engine.deliver, []
    def deliver(callbacks, epoch, read):
        if epoch == 2 and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        return real_deliver(callbacks, epoch, read)
    engine.deliver = deliver
if os.environ["RANK"] != "0":
    real_open = builtins.open
    def recording_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            writes.append(str(file))
        return real_open(file, mode, *args, **kwargs)
    builtins.open = recording_open
    for name in ("replace", "rename", "mkdir", "makedirs", "remove", "unlink"):
        def recording(*args, _real=getattr(os, name), _name=name, **kwargs):
            writes.append(f"{_name} {args[0]}")
            return _real(*args, **kwargs)
        setattr(os, name, recording)
    shutil.rmtree = lambda path, *a, **k: writes.append(f"rmtree {path}")
exp = load_experiment_with_plugins(sys.argv[1])
run_experiment(exp, out=sys.argv[2], device="cpu", quiet=True, stop_after=1)
try:
    run_experiment(exp, out=sys.argv[2], device="cpu", quiet=True)
except KeyboardInterrupt as exc:
    print(f"rank {os.environ['RANK']} stopped: {exc}")
run_experiment(exp, out=sys.argv[2], device="cpu", quiet=True)
print(f"rank {os.environ['RANK']} wrote {writes}")
"""


def rows_of(run_dir: Path) -> list[RunRow]:
    with ResultStore(run_dir / "runs.sqlite") as store:
        return list(store.rows())


def close(a: object, b: object, key: str = "") -> None:
    """Numbers (nested in lists and dicts) equal within the tolerances above."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), key
        for k in a:
            close(a[k], b[k], f"{key}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), key
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{key}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        tolerance = TRAIN_TOLERANCE if ".train_loss" in key else EVAL_TOLERANCE
        assert abs(float(a) - float(b)) <= tolerance, (key, a, b)  # type: ignore[arg-type]
    else:
        assert a == b, key


@pytest.mark.usefixtures("no_report")  # the in-process reference: its run is compared, not a report
def test_two_gloo_ranks_match_one_process_write_only_on_rank_0_and_resume(tmp_path: Path) -> None:
    exp = tmp_path / "tiny_ddp.yaml"
    exp.write_text(tiny_shapes_unet("tiny_ddp", tmp_path / "data", epochs=2))
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the 1-process reference (and the data, generated once before the ranks read it)
        assert main(["run", str(exp), "--out", str(tmp_path / "one"), "--device", "cpu", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    root = str(Path(__file__).resolve().parents[1])  # the script imports stitch from this checkout
    path = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*cmd, str(script), str(exp), str(tmp_path / "two")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 1 wrote []" in done.stdout, done.stdout
    assert "rank 0 wrote" in done.stdout
    for r in (0, 1):  # rank 0 stopped at rank 1's Ctrl-C, at the same step
        assert f"rank {r} stopped: interrupted at epoch 2, step 2; checkpoint saved to " in done.stdout
    [one], [two] = rows_of(tmp_path / "one" / "tiny_ddp"), rows_of(tmp_path / "two" / "tiny_ddp")
    assert (two.run_id, two.status, two.epochs_done, two.best_epoch) == (
        one.run_id,
        "done",
        2,
        one.best_epoch,
    )
    timing = {"seconds", "train_images_per_s"}
    history = [[{k: v for k, v in e.items() if k not in timing} for e in r.history] for r in (one, two)]
    close(history[0], history[1], "history")
    close(one.best_metrics, two.best_metrics, "best_metrics")
    close(one.final_metrics, two.final_metrics, "final_metrics")
    log = (tmp_path / "two" / "tiny_ddp" / "log.txt").read_text()
    assert log.count("epoch 1/2") == 1  # the later calls resumed after epoch 1
    assert log.count("epoch 2/2") == 1  # and finished epoch 2 after its step 2
    best = torch.load(tmp_path / "two" / "tiny_ddp" / "ckpt" / two.run_id / "best.pt", weights_only=False)
    assert not any(k.startswith("module.") for k in best["model"])  # the unwrapped model's keys


def test_rank_slices_cover_each_global_batch_once() -> None:
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    slices = [list(RankSlice(batches, 11, 4, (r, 2))) for r in range(2)]
    assert slices == [[[0, 1], [4, 5], [8]], [[2, 3], [6, 7], [9, 10]]]
    assert len(RankSlice(batches, 9, 4, (0, 2))) == 2  # a last batch of 1 image for 2 ranks: dropped


def test_nproc_per_node_relaunches_the_same_command_under_torchrun(tmp_path: Path, monkeypatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr("torch.distributed.run.run", lambda args: seen.append(args.training_script_args))
    exp = tmp_path / "exp.yaml"
    exp.write_text(tiny_shapes_unet("tiny_ddp", tmp_path / "data"))
    argv = ["run", str(exp), "--nproc-per-node", "2", "--out", str(tmp_path), "--device", "cpu"]
    assert main(argv) == 0
    assert seen == [["run", str(exp), "--out", str(tmp_path), "--device", "cpu"]]
    assert without_nproc(["run", "x", "--nproc-per-node=3", "--quiet"]) == ["run", "x", "--quiet"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nproc-per-node", "0"], "--nproc-per-node 0: must be at least 1"),
        (["--nproc-per-node", "-2"], "--nproc-per-node -2: must be at least 1"),
    ],
)
def test_bad_nproc_per_node_is_one_line(argv: list[str], message: str, capsys) -> None:
    assert main(["run", "exp.yaml", *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"


def test_launch_refuses_an_indivisible_batch_before_starting(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("torch.distributed.run.run", lambda args: pytest.fail("launched"))
    exp = tmp_path / "exp.yaml"
    exp.write_text(tiny_shapes_unet("tiny_ddp", tmp_path / "data"))  # batch_size 4
    assert main(["run", str(exp), "--nproc-per-node", "3", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        "error: train.batch_size 4 with 3 DDP processes: the global batch must divide evenly "
        "(each process takes batch_size / 3); use a multiple of 3\n"
    )


def test_what_ddp_cannot_do_is_one_line() -> None:
    with pytest.raises(StitchError, match=r"^train.batch_size 5 with 2 DDP processes: .*multiple of 2$"):
        check_ddp_options(2, 5, None, None, None)
    with pytest.raises(StitchError, match=r"^--jobs under torchrun"):
        check_ddp_options(2, 4, "2", None, None)
    with pytest.raises(StitchError, match=r"^--storage under torchrun"):
        check_ddp_options(2, 4, None, None, "sqlite:///x.db")
    check_ddp_options(2, 4, None, None, None)
    check_ddp_options(2, 4, 1, None, None)


def test_sweep_under_torchrun_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["sweep", str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: stitch sweep under torchrun: ")

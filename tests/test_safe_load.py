"""Files stitch reads never run code: a pickle payload planted in an epoch checkpoint, ``best.pt``
or a baseline weights file is refused with one line naming the file, and never executed."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch
from yaml_snippets import tiny_shapes_unet

from stitch.cli import main
from stitch.safe_load import UnsafeFileError, load_plain

#: the checkpoints of the runs here are checked, not their reports
pytestmark = pytest.mark.usefixtures("no_report")


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path, model_state: dict | None = None) -> None:
    torch.save({"model": model_state or {}, "epoch": 1, "extra": Payload(marker)}, path)


def experiment(tmp_path: Path) -> Path:
    path = tmp_path / "safe.yaml"
    path.write_text(
        tiny_shapes_unet("safe", tmp_path / "data", 2)
        + textwrap.dedent("""\
            insertions:
              - {name: SE, module: SE, at: "enc*"}
            seeds: [0]
            """)
    )
    return path


def test_the_checkpoints_stitch_writes_load_as_plain_data(tmp_path: Path) -> None:
    path = experiment(tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    ckpts = sorted((tmp_path / "runs" / "safe" / "ckpt").rglob("*.pt"))
    assert {p.name for p in ckpts} >= {"epoch-0002.pt", "best.pt"}
    for p in ckpts:
        obj = load_plain(p)
        assert "model" in obj and ("state" in obj or "metrics" in obj)
        if "state" in obj:  # the loop state, optimiser, schedule and scaler: everything resume needs
            assert {"optimizer", "scheduler", "scaler"} <= set(obj) and obj["state"]["epoch"] >= 1


def test_a_planted_epoch_checkpoint_is_refused_never_run(tmp_path: Path, capsys) -> None:
    path = experiment(tmp_path)
    from stitch.config import load_experiment
    from stitch.run import run_experiment

    run_experiment(load_experiment(path), out=tmp_path / "runs", quiet=True, stop_after=1)  # interrupted
    ckpt = sorted((tmp_path / "runs" / "safe" / "ckpt").rglob("epoch-0001.pt"))[0]  # the first run's
    marker = tmp_path / "PWNED"
    plant(ckpt, marker)
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ckpt) in err[0] and "refused" in err[0] and "--force" in err[0]
    assert not marker.exists()


def test_a_planted_best_checkpoint_is_refused_by_show_and_the_test_evaluation(tmp_path: Path, capsys) -> None:
    path = experiment(tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "safe"
    marker = tmp_path / "PWNED"
    bests = sorted(run_dir.rglob("best.pt"))
    for best in bests:
        plant(best, marker)
    capsys.readouterr()
    assert main(["show", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "best.pt: refused" in err[0] and any(str(b) in err[0] for b in bests)

    from stitch.held_out import chosen_weights

    with pytest.raises(UnsafeFileError, match="refused"):  # the test evaluation reads best.pt the same way
        chosen_weights(bests[0], 1, torch.device("cpu"))
    assert not marker.exists()


def test_a_planted_baseline_weights_file_is_refused(tmp_path: Path) -> None:
    from stitch.baselines.maskrcnn_weights import read_state_dict

    marker = tmp_path / "PWNED"
    weights = tmp_path / "weights.pth"
    plant(weights, marker, {"w": torch.zeros(1)})
    with pytest.raises(ValueError, match="holds Python objects besides tensors"):
        read_state_dict(str(weights), "weights")
    assert not marker.exists()


def test_no_unsafe_torch_load_in_the_code() -> None:
    root = Path(__file__).resolve().parents[1]
    for folder in ("stitch", "modules_zoo"):
        for py in (root / folder).rglob("*.py"):
            text = py.read_text(encoding="utf-8")
            assert "weights_only=False" not in text, py
            if py.name != "safe_load.py":
                assert "torch.load(" not in text, f"{py}: load .pt files through stitch.safe_load.load_plain"

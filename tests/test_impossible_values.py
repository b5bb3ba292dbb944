"""Impossible values are one-line errors before any training: non-finite numbers anywhere, sweep
choices `train:` itself would refuse, sizes that cannot fit in memory or in a file name."""

from __future__ import annotations

from pathlib import Path

import pytest

from stitch.cli import main

HEAD = "name: x\ntask: segmentation\nbaseline: {model: unet}\n"

CASES = {
    "lr inf": (
        "train:\n  optimizer: {name: adamw, lr: .inf}\n",
        "train.optimizer.lr: Input should be a finite number",
    ),
    "weight decay nan": (
        "train:\n  optimizer: {name: sgd, weight_decay: .nan}\n",
        "train.optimizer.weight_decay: Input should be a finite number",
    ),
    "power inf": (
        "train:\n  scheduler: {name: poly, power: .inf}\n",
        "train.scheduler.power: Input should be a finite number",
    ),
    "normalize nan": (
        "data: {dataset: nuclei, normalize: [[.nan], [0.2]]}\n",
        "normalize mean/std must be finite numbers",
    ),
    "sweep range nan": (
        "sweep:\n  train: {optimizer.lr: {low: .nan, high: 1}}\n",
        "sweep.train.optimizer.lr: low must be a finite number",
    ),
    "sweep batch 0": (
        "sweep:\n  train: {batch_size: [0, -4]}\n",
        "sweep.train.batch_size: 0 is not a valid batch_size",
    ),
    "sweep lr range": (
        "sweep:\n  train: {optimizer.lr: {low: -1, high: 1}}\n",
        "-1 is not a valid optimizer.lr",
    ),
    "epochs 1e20": (
        "train: {epochs: 100000000000000000000}\n",
        "train.epochs: Input should be less than or equal to 100000",
    ),
    "image 65536": (
        "data: {dataset: nuclei, image_size: [65536, 65536]}\n",
        "data.image_size[0]: Input should be less than or equal to 8192",
    ),
    "probe batch": (
        "probe: {batch_size: 100000000000000000000}\n",
        "probe.batch_size: Input should be less than or equal to 64",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_impossible_values_are_one_line(tmp_path: Path, capsys, case: str) -> None:
    extra, message = CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD + extra)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_long_names_and_epochs_on_the_command_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "long.yaml"
    path.write_text(HEAD.replace("name: x", "name: " + "n" * 300))
    assert main(["validate", str(path)]) == 2
    assert "name: String should have at most 100 characters" in capsys.readouterr().err
    path.write_text(HEAD)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(path), "--epochs", "100000000000000000000"])
    assert exit_info.value.code == 2
    assert "must be at most 100000" in capsys.readouterr().err


def test_a_file_where_the_run_directory_goes_is_one_line(tmp_path: Path, capsys) -> None:
    from yaml_snippets import tiny_shapes_unet

    path = tmp_path / "e.yaml"
    path.write_text(tiny_shapes_unet("taken", tmp_path / "data", 1))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "taken").write_text("not a directory")
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "taken: is a file, where the experiment's run directory goes" in err[0]

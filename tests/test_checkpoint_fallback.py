"""A checkpoint that reads but does not fit falls back to the one before it: another model's, one
with a NaN weight, one whose tensor bytes changed after writing (zip intact, checksum kept), one
whose optimiser state does not load. The run then finishes exactly as an uninterrupted one; when
nothing fits, training starts from the model as built. A pickle payload still raises."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_interrupt import Setup, same_run
from torch import nn

from stitch.checkpoints import checksum, save_checkpoint
from stitch.engine import LoopState
from stitch.safe_load import UnsafeFileError, load_plain


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Setup, tuple[LoopState, nn.Module]]:
    """The setup and its run never interrupted (3 epochs)."""
    setup = Setup(tmp_path_factory.mktemp("fallback"))
    model = setup.model()
    return setup, (setup.train(model, tmp_path_factory.mktemp("straight")), model)


def other_model(setup: Setup, path: Path, tmp_path: Path) -> None:
    """Overwrite ``path`` with the epoch checkpoint of another model (a wider head)."""
    model = nn.Sequential(setup.model(), nn.Conv2d(3, 3, 1))
    setup.train(model, tmp_path / "other", stop_after=2)
    path.write_bytes((tmp_path / "other" / path.name).read_bytes())


def nan_weight(setup: Setup, path: Path, tmp_path: Path) -> None:
    """A NaN in one weight, written with a matching checksum (only the finiteness check sees it)."""
    ck = load_plain(path)
    del ck["checksum"]
    next(t for t in ck["model"].values() if t.is_floating_point()).view(-1)[0] = float("nan")
    save_checkpoint(ck, path)


def flipped_bytes(setup: Setup, path: Path, tmp_path: Path) -> None:
    """One weight changed after writing: a valid zip and pickle, but the stored checksum no
    longer matches (as bytes flipped on disk would leave it)."""
    ck = load_plain(path)
    weight = next(t for t in ck["model"].values() if t.is_floating_point())
    weight.view(-1)[0] += 1e-3
    torch.save(ck, path)
    assert load_plain(path)["checksum"] != checksum({k: v for k, v in ck.items() if k != "checksum"})


def other_optimizer(setup: Setup, path: Path, tmp_path: Path) -> None:
    """A model state that fits but an optimiser state of other parameter groups: the model state
    loads before the optimiser's fails, and must be undone."""
    ck = load_plain(path)
    del ck["checksum"]
    ck["optimizer"]["param_groups"] = ck["optimizer"]["param_groups"] * 2
    save_checkpoint(ck, path)


DAMAGE: dict[str, Callable[[Setup, Path, Path], None]] = {
    "another model": other_model,
    "non-finite": nan_weight,
    "checksum mismatch": flipped_bytes,
    "does not load": other_optimizer,
}


@pytest.mark.parametrize("why", list(DAMAGE))
def test_an_unfit_checkpoint_falls_back_to_the_epoch_before(
    straight, tmp_path: Path, caplog, why: str
) -> None:
    setup, uninterrupted = straight
    ckpt = tmp_path / "b"
    setup.train(setup.model(), ckpt, stop_after=2)  # interrupted after epoch 2
    DAMAGE[why](setup, ckpt / "epoch-0002.pt", tmp_path)
    model = setup.model()
    with caplog.at_level(logging.WARNING, logger="stitch.engine"):
        state = setup.train(model, ckpt)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "stitch.engine"]
    assert str(ckpt / "epoch-0002.pt") in warning and why in warning and "\n" not in warning
    same_run(uninterrupted, (state, model))  # epoch 2 trained again from epoch 1's checkpoint


@pytest.mark.parametrize("why", ["does not load", "another model"])
def test_when_no_checkpoint_fits_training_starts_from_the_model_as_built(
    straight, tmp_path: Path, why: str
) -> None:
    setup, uninterrupted = straight
    ckpt = tmp_path / "b"
    setup.train(setup.model(), ckpt, stop_after=1)
    DAMAGE[why](setup, ckpt / "epoch-0001.pt", tmp_path)
    if why == "another model":  # the other model's run left its epoch 2 too: only epoch 1 counts here
        (ckpt / "epoch-0002.pt").unlink(missing_ok=True)
    model = setup.model()
    assert setup.train(model, ckpt, stop_after=0).epoch == 0  # loads (or not) and trains nothing
    built = setup.model().state_dict()
    assert all(torch.equal(t, built[k]) for k, t in model.state_dict().items())
    state = setup.train(model, ckpt)
    same_run(uninterrupted, (state, model))


def test_a_pickle_payload_is_refused_never_skipped(straight, tmp_path: Path) -> None:
    setup, _ = straight
    ckpt = tmp_path / "b"
    setup.train(setup.model(), ckpt, stop_after=2)
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {}, "extra": Payload()}, ckpt / "epoch-0002.pt")
    with pytest.raises(UnsafeFileError, match="epoch-0002.pt"):
        setup.train(setup.model(), ckpt)
    assert not marker.exists()


def test_a_checkpoint_from_before_checksums_is_resumed_from(straight, tmp_path: Path, caplog) -> None:
    setup, uninterrupted = straight
    ckpt = tmp_path / "b"
    setup.train(setup.model(), ckpt, stop_after=2)
    ck = load_plain(ckpt / "epoch-0002.pt")
    del ck["checksum"]
    torch.save(ck, ckpt / "epoch-0002.pt")
    model = setup.model()
    with caplog.at_level(logging.WARNING, logger="stitch.engine"):
        state = setup.train(model, ckpt)
    assert not [r for r in caplog.records if r.name == "stitch.engine"]
    same_run(uninterrupted, (state, model))


@pytest.mark.usefixtures("no_report")  # the run and its log are checked, not the report
def test_stitch_run_writes_the_fallback_to_its_log(tmp_path: Path) -> None:
    """Through ``stitch run``: a checkpoint skipped on resume is said on the console and in
    log.txt (not only on stderr), and the run still ends ``done``."""
    from yaml_snippets import tiny_shapes_unet

    from stitch.config import load_experiment
    from stitch.run import run_experiment

    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_shapes_unet("fallback", tmp_path / "data", 3) + "seeds: [0]\n")
    exp = load_experiment(path)
    (row,) = run_experiment(exp, out=tmp_path / "runs", quiet=True, stop_after=2)
    damaged = tmp_path / "runs" / "fallback" / "ckpt" / row.run_id / "epoch-0002.pt"
    nan_weight(None, damaged, tmp_path)  # type: ignore[arg-type]
    (row,) = run_experiment(exp, out=tmp_path / "runs", quiet=True)
    log = (tmp_path / "runs" / "fallback" / "log.txt").read_text()
    assert row.status == "done" and f"{damaged}: not resumed from: " in log

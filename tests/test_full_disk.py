"""A full disk: every write that fails for lack of space is one line (``DiskFullError``), leaves no
temporary or half-written file and no run stuck ``running``, and the same command with space
again resumes and ends with the results of an uninterrupted run. On a real small tmpfs (root
only) and with an injected ENOSPC (always)."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from yaml_snippets import tiny_shapes_unet

import stitch.errors
from stitch.cli import main
from stitch.errors import DiskFullError, disk_full_error
from stitch.fileio import atomic_path, write_text
from stitch.safe_load import load_plain
from stitch.store import ResultStore, RunRow

NAME = "full"
TIMING = ("seconds", "train_images_per_s")  # per-epoch records that are measured, not computed


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One run of 3 epochs trained without interruption: ``(experiment file, its run dir)``."""
    root = tmp_path_factory.mktemp("full_disk")
    exp = root / f"{NAME}.yaml"
    exp.write_text(tiny_shapes_unet(NAME, root / "data", epochs=3) + "  keep_last: 2\nseeds: [0]\n")
    with pytest.MonkeyPatch.context() as patch:  # its results are compared, not its report
        patch.setattr("stitch.run.write_report", lambda run_dirs, out_dir, **kwargs: [])
        assert main(["run", str(exp), "--out", str(root / "runs"), "--quiet"]) == 0
    return exp, root / "runs" / NAME


def results(run_dir: Path) -> dict[str, Any]:
    """What a run computed (rows without timings, and the last epoch's weights), by run id."""
    with ResultStore(run_dir / "runs.sqlite") as store:
        rows = store.rows()
    out: dict[str, Any] = {}
    for r in rows:
        history = [{k: v for k, v in e.items() if k not in TIMING} for e in r.history]
        weights = load_plain(run_dir / "ckpt" / r.run_id / f"epoch-{r.epochs_done:04d}.pt")["model"]
        out[r.run_id] = (
            r.status,
            r.epochs_done,
            r.best_epoch,
            history,
            r.best_metrics,
            r.final_metrics,
            r.test_best_metrics,
            r.test_last_metrics,
            r.test_per_image,
            {k: v.tolist() for k, v in weights.items()},
        )
    return out


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of the atomic writer under ``folder``."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def run_fails_for_space(capsys: pytest.CaptureFixture[str], exp: Path, out: Path) -> RunRow:
    """``stitch run`` fails with one line naming the full disk, leaves no temporary file and
    stores the run as failed with that line; returns its row."""
    capsys.readouterr()
    assert main(["run", str(exp), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no space left on "), err
    assert "free space and run the same command again" in err[0]
    assert leftovers(out) == []
    with ResultStore(out / NAME / "runs.sqlite") as store:
        (row,) = store.rows()
    assert row.status == "failed" and row.error == err[0].removeprefix("error: ")
    return row


# --- the writer itself -------------------------------------------------------------------------


def test_a_failed_write_removes_its_temporary_file_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "results.csv"
    write_text(target, "old\n")
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ValueError("the writer broke")
    assert target.read_text() == "old\n" and leftovers(tmp_path) == []


def test_enospc_while_writing_is_one_line_naming_the_disk_and_the_file(tmp_path: Path) -> None:
    target = tmp_path / "ckpt" / "epoch-0001.pt"
    with pytest.raises(DiskFullError) as err, atomic_path(target) as tmp:
        tmp.write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")
    message = str(err.value)
    assert message.startswith("no space left on /") and f"free) while writing {target};" in message
    assert message.endswith(
        "free space and run the same command again (training resumes from the last checkpoint)"
    )
    assert err.value.__suppress_context__ and "\n" not in message
    assert not target.exists() and leftovers(tmp_path) == []


def test_a_quota_is_named_as_such(tmp_path: Path) -> None:
    with (
        pytest.raises(DiskFullError, match=r"\(disk quota exceeded\) while writing"),
        atomic_path(tmp_path / "a.txt"),
    ):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")


@pytest.mark.parametrize(("free", "full"), [(10, True), (10**12, False)])
def test_a_torch_writer_error_without_errno_is_a_full_disk_only_when_space_is_low(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free: int, full: bool
) -> None:
    """torch's zip writer reports a full disk as "unexpected pos" with no errno: the free space
    decides."""
    monkeypatch.setattr(stitch.errors, "free_bytes", lambda path: free)
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 363200 vs 363088")
    assert (disk_full_error(error, tmp_path / "x.pt") is not None) == full
    with pytest.raises(DiskFullError if full else RuntimeError), atomic_path(tmp_path / "x.pt"):
        raise error
    assert leftovers(tmp_path) == []


def test_sqlite_refusing_to_grow_is_a_disk_full_error(tmp_path: Path) -> None:
    """SQLite's own "database or disk is full" (here a page limit, as a full disk would give)."""
    db = tmp_path / "runs.sqlite"
    with ResultStore(db) as store:
        store.start(RunRow("r1", "e", "Baseline", "baseline", [], 0, "running", {}, "miou"))
    conn = sqlite3.connect(db)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    with ResultStore(db) as store:
        store._conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # no room for a long history
        with pytest.raises(DiskFullError, match=rf"^no space left on .* while writing {db};"):
            store.update("r1", history=[{"epoch": i, "note": "x" * 100} for i in range(1000)])
        store.update("r1", status="failed", error="a short update still fits")
        assert store.get("r1").status == "failed"  # type: ignore[union-attr]


# --- a whole run ---------------------------------------------------------------------------------


def test_an_injected_enospc_fails_the_run_in_one_line_and_the_rerun_resumes_exactly(
    reference: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp, ref_dir = reference
    out = tmp_path / "runs"
    real_save, calls = torch.save, []

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(f)
        if len(calls) == 3:  # epoch 1 and best.pt written; the disk fills during epoch 2's checkpoint
            Path(f).write_bytes(b"PK" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    row = run_fails_for_space(capsys, exp, out)
    assert row.epochs_done == 1 and "epoch-0002.pt" in (row.error or "")
    monkeypatch.undo()
    assert main(["run", str(exp), "--out", str(out), "--quiet"]) == 0
    assert "resum" in (out / NAME / "log.txt").read_text().lower()
    assert results(out / NAME) == results(ref_dir)


def test_tensorboard_on_a_full_disk_is_the_same_line_and_the_rerun_resumes_exactly(
    reference: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorBoard's event writer raises a bare ``OSError(ENOSPC)`` on a flush: the same one line
    and exit 2 (not a failed run and exit 1), and the next call resumes exactly."""
    from torch.utils.tensorboard import SummaryWriter

    exp, ref_dir = reference
    out = tmp_path / "runs"

    def flush(self: SummaryWriter) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "flush", flush)
    row = run_fails_for_space(capsys, exp, out)
    assert row.epochs_done == 1
    monkeypatch.undo()
    assert main(["run", str(exp), "--out", str(out), "--quiet"]) == 0
    assert results(out / NAME) == results(ref_dir)


def test_when_sqlite_itself_cannot_write_the_line_stays_one_and_the_row_resumes(
    reference: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is what fills up (after epoch 1 was stored): the run cannot be marked failed
    either, so the line names runs.sqlite, the row keeps epoch 1 as ``running``, and the next
    call resumes it like any interrupted run."""
    exp, ref_dir = reference
    out = tmp_path / "runs"
    real_update = ResultStore.update
    stored: list[int] = []

    def update(self: ResultStore, run_id: str, **fields: Any) -> None:
        if stored:  # epoch 1 is in; every later write finds the disk full
            with self.guard():
                error = sqlite3.OperationalError("database or disk is full")
                error.sqlite_errorcode = 13  # SQLITE_FULL, as SQLite sets it
                raise error
        if "epochs_done" in fields:
            stored.append(fields["epochs_done"])
        real_update(self, run_id, **fields)

    monkeypatch.setattr(ResultStore, "update", update)
    capsys.readouterr()
    assert main(["run", str(exp), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    db = out / NAME / "runs.sqlite"
    assert len(err) == 1 and err[0].startswith("error: no space left on ")
    assert err[0].split(";")[0].endswith(f"while writing {db}")
    assert leftovers(out) == []
    monkeypatch.undo()
    with ResultStore(db) as store:
        (row,) = store.rows()
    assert (row.status, row.epochs_done) == ("running", 1)
    assert main(["run", str(exp), "--out", str(out), "--quiet"]) == 0
    assert results(out / NAME) == results(ref_dir)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted at ``tmp_path/disk`` (skipped where mounting is not permitted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64M", "tmpfs", str(disk)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        yield disk
    finally:  # lazily: the in-process run's logger still holds log.txt open
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def resize(disk: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def test_a_real_full_tmpfs_fails_in_one_line_and_the_rerun_with_space_resumes_exactly(
    reference: tuple[Path, Path], small_tmpfs: Path, capsys
) -> None:
    exp, ref_dir = reference
    ckpt = next((ref_dir / "ckpt").iterdir())
    # room for epoch 1's checkpoint, best.pt and the small files, not for epoch 2's checkpoint
    size = (ckpt / "epoch-0003.pt").stat().st_size + (ckpt / "best.pt").stat().st_size + (512 << 10)
    resize(small_tmpfs, size)
    row = run_fails_for_space(capsys, exp, small_tmpfs)
    assert f"no space left on {small_tmpfs} (" in (row.error or "")
    assert row.epochs_done == 1  # the row and the checkpoints agree: epoch 1 is kept
    resize(small_tmpfs, 64 << 20)
    assert main(["run", str(exp), "--out", str(small_tmpfs), "--quiet"]) == 0
    assert leftovers(small_tmpfs) == []
    assert results(small_tmpfs / NAME) == results(ref_dir)


def fill(disk: Path) -> Path:
    """Fill the file system of ``disk`` to the last byte with one file; return it."""
    filler = disk / "filler"
    with open(filler, "wb") as f, pytest.raises(OSError) as err:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    assert err.value.errno == errno.ENOSPC
    return filler


def test_opening_the_database_on_a_full_tmpfs_is_one_line(small_tmpfs: Path) -> None:
    """SQLite says "disk I/O error" when it cannot grow its -shm file: a full disk all the same."""
    resize(small_tmpfs, 1 << 20)
    db = small_tmpfs / "x" / "runs.sqlite"
    with ResultStore(db) as store:
        store.start(RunRow("r1", "e", "Baseline", "baseline", [], 0, "running", {}, "miou"))
    filler = fill(small_tmpfs)
    with pytest.raises(
        DiskFullError, match=rf"^no space left on {small_tmpfs} \(0 B free\) while writing {db};"
    ):
        ResultStore(db)
    with pytest.raises(DiskFullError, match=r"^no space left on .* while writing .*new"):
        ResultStore(small_tmpfs / "new" / "runs.sqlite")
    filler.unlink()
    with ResultStore(db) as store:
        assert store.get("r1") is not None


def test_a_log_line_that_cannot_be_written_is_dropped_quietly(tmp_path: Path, capsys, monkeypatch) -> None:
    """log.txt on a full disk: the line is lost, but logging prints no traceback on stderr (the
    console shows the one-line error instead); other logging errors still show."""
    import logging

    from stitch.runs import run_logger

    log = run_logger(tmp_path)
    handler = log.handlers[0]

    def emit_failing(code: int) -> Any:
        def emit(record: logging.LogRecord) -> None:
            try:
                raise OSError(code, os.strerror(code))
            except OSError:
                handler.handleError(record)

        return emit

    try:
        monkeypatch.setattr(handler, "emit", emit_failing(errno.ENOSPC))
        capsys.readouterr()
        log.info("a line")
        assert capsys.readouterr().err == ""
        monkeypatch.setattr(handler, "emit", emit_failing(errno.EIO))
        log.info("another line")
        assert "Logging error" in capsys.readouterr().err
    finally:
        handler.close()
        log.removeHandler(handler)

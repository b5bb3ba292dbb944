"""A damaged or lost results database: one line naming the file and the fix in every command that
opens it, never a traceback, and never a silent retrain of runs whose checkpoints exist."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from yaml_snippets import tiny_shapes_unet

from stitch.cli import main
from stitch.errors import StitchError
from stitch.store import ResultStore, RunRow, database_error

NAME = "dmg"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished one-run experiment (1 epoch): its file and its ``--out`` folder."""
    root = tmp_path_factory.mktemp("damaged")
    exp = root / f"{NAME}.yaml"
    exp.write_text(tiny_shapes_unet(NAME, root / "data", epochs=1) + "seeds: [0]\n")
    with pytest.MonkeyPatch.context() as patch:  # its database is damaged and read, not its report
        patch.setattr("stitch.run.write_report", lambda run_dirs, out_dir, **kwargs: [])
        assert main(["run", str(exp), "--out", str(root / "runs"), "--quiet"]) == 0
    return exp, root / "runs"


@pytest.fixture
def copy(trained: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the trained ``--out`` folder to damage: ``(experiment file, out)``."""
    exp, out = trained
    shutil.copytree(out, tmp_path / "runs")
    return exp, tmp_path / "runs"


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, require exit code 2 and exactly one line on stderr; return that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a digest of its bytes (but the run directory's lock, which
    each command takes)."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def overwrite_page(db: Path, page: int = 2, page_size: int = 4096) -> None:
    """Random bytes over one page of a SQLite file (pages count from 1)."""
    with open(db, "r+b") as f:
        f.seek((page - 1) * page_size)
        f.write(random.Random(page).randbytes(page_size))


COMMANDS = {
    "report": lambda exp, out: ["report", str(out / NAME)],
    "run": lambda exp, out: ["run", str(exp), "--out", str(out), "--quiet"],
    "show": lambda exp, out: ["show", str(out / NAME)],
    "validate": lambda exp, out: ["validate", str(exp), "--out", str(out)],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_overwritten_page_is_one_line_naming_the_file_and_the_fix(
    copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str], command: str
) -> None:
    exp, out = copy
    db = out / NAME / "runs.sqlite"
    assert db.stat().st_size > 2 * 4096  # a real database of several pages
    overwrite_page(db)
    before = snapshot(out)
    line = one_error_line(capsys, COMMANDS[command](exp, out))
    assert line.startswith(f"error: {db}: the results database is damaged (")
    assert "restore it from a copy" in line and "stitch run --force" in line
    assert snapshot(out) == before  # nothing trained, nothing written, the damaged file left as it was


def test_a_file_that_is_no_database_is_one_line(copy: tuple[Path, Path], capsys) -> None:
    exp, out = copy
    db = out / NAME / "runs.sqlite"
    db.write_text("these are my notes, not a database\n" * 200)
    line = one_error_line(capsys, ["report", str(out / NAME)])
    assert line.startswith(f"error: {db}: the results database is damaged (file is not a database)")


def test_a_json_column_that_does_not_decode_is_one_line(copy: tuple[Path, Path]) -> None:
    db = copy[1] / NAME / "runs.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET history = '[{\"epoch\": 1, '")
    conn.close()
    with ResultStore(db) as store, pytest.raises(StitchError, match="the results database is damaged") as err:
        store.rows()
    assert str(err.value).startswith(f"{db}: ")


class FailingConnection:
    """A connection whose every statement fails with ``error`` (SQLite finding a damaged page or a
    full disk in the middle of a query)."""

    def __init__(self, error: sqlite3.DatabaseError) -> None:
        self.error = error

    def execute(self, *args: Any) -> Any:
        raise self.error

    def __enter__(self) -> FailingConnection:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def close(self) -> None:
        pass


def sqlite_error(cls: type[sqlite3.DatabaseError], message: str, code: int) -> sqlite3.DatabaseError:
    error = cls(message)
    error.sqlite_errorcode = code  # what SQLite sets on its own errors
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (sqlite_error(sqlite3.DatabaseError, "database disk image is malformed", 11), "is damaged ("),
        (sqlite_error(sqlite3.OperationalError, "database or disk is full", 13), "no space left on "),
        (sqlite_error(sqlite3.OperationalError, "database is locked", 5), "database is locked"),
    ],
)
def test_every_query_turns_a_sqlite_error_into_one_line(
    tmp_path: Path, error: sqlite3.DatabaseError, expected: str
) -> None:
    db = tmp_path / "runs.sqlite"
    row = RunRow("r1", "e", "Baseline", "baseline", [], 0, "running", {}, "miou")
    store = ResultStore(db)
    store.start(row)
    store._conn = FailingConnection(error)  # type: ignore[assignment]
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: store.get("r1"),
        "rows": store.rows,
        "start": lambda: store.start(row),
        "update": lambda: store.update("r1", status="failed"),
    }
    for name, call in calls.items():
        with pytest.raises(StitchError) as err:
            call()
        message = str(err.value)
        assert expected in message and str(db) in message, name
        assert "\n" not in message
    assert isinstance(database_error(db, error), StitchError)


@pytest.mark.parametrize("state", ["empty", "missing"])
def test_a_lost_database_beside_checkpoints_never_retrains(
    copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str], state: str
) -> None:
    exp, out = copy
    db = out / NAME / "runs.sqlite"
    if state == "empty":
        db.write_bytes(b"")
    else:
        db.unlink()
    before = snapshot(out)
    line = one_error_line(capsys, ["run", str(exp), "--out", str(out), "--quiet"])
    assert line.startswith(f"error: {db}: the results database is {state}")
    assert "holds the checkpoints of 1 run(s); restore runs.sqlite from a copy" in line
    assert "stitch run --force" in line
    assert snapshot(out) == before  # no checkpoint removed, no row written
    if state == "empty":  # a reader says the same (a missing one: "run `stitch run` first")
        assert one_error_line(capsys, ["report", str(out / NAME)]) == line
    assert main(["run", str(exp), "--out", str(out), "--quiet", "--force"]) == 0  # the fix it names
    with ResultStore(db) as store:
        assert [r.status for r in store.rows()] == ["done"]


def test_an_empty_database_without_checkpoints_is_a_new_database(tmp_path: Path) -> None:
    (tmp_path / "ckpt" / "0123456789abcdef").mkdir(parents=True)  # a run folder with no checkpoint yet
    db = tmp_path / "runs.sqlite"
    db.write_bytes(b"")
    with ResultStore(db) as store:
        assert store.rows() == []


def test_force_opens_a_lost_database_beside_checkpoints_as_new(copy: tuple[Path, Path]) -> None:
    db = copy[1] / NAME / "runs.sqlite"
    db.write_bytes(b"")
    with pytest.raises(StitchError, match="is empty"):
        ResultStore(db)
    with ResultStore(db, force=True) as store:
        assert store.rows() == []


def test_the_integrity_check_at_open_is_cheap(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """50 runs with 100-epoch histories and per-image matrices (a 2.5 MB database) open in
    a few milliseconds (measured: 2-11 ms on a 2-core machine); the bound leaves room for load."""
    with ResultStore(trained[1] / NAME / "runs.sqlite") as store:
        (row,) = store.rows()
    db = tmp_path / "runs.sqlite"
    matrices = [[[1, 2, 3], [4, 5, 6], [7, 8, 9]]] * 200
    with ResultStore(db) as store:
        for i in range(50):
            store.start(
                dataclasses.replace(
                    row,
                    run_id=f"{i:016x}",
                    history=row.history * 100,
                    test_per_image={"best": matrices, "last": matrices},
                )
            )
    assert db.stat().st_size > 1_000_000
    start = time.perf_counter()
    ResultStore(db).close()
    assert time.perf_counter() - start < 1.0

"""The results database: one row per variant x seed, keyed by a hash of the resolved config.

SQLite in the run directory (WAL mode, so a reader such as ``stitch report`` can look while runs
write; several writers, ``stitch run --jobs N``'s worker processes, wait for each other: a busy
timeout of :data:`BUSY_TIMEOUT_S` and a retry of a write that still finds the database locked).
Metrics, history and config are JSON columns: tables are views of these rows, and every number
in a report can be traced back to its run id. ``peak_memory_mb`` is the run's peak memory
(:mod:`stitch.memory`: CUDA max allocated, or the process's max RSS on CPU); databases written
before it existed get the column (empty for their runs) when opened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from stitch.errors import StitchError, disk_full_error, exception_text
from stitch.fileio import atomic_path

STATUSES = ("running", "done", "failed", "diverged", "pruned")  # pruned: a sweep stopped it early
#: seconds a connection waits for another process's write to end, and how often a write that still
#: finds the database locked (SQLITE_BUSY, e.g. a WAL checkpoint racing it) is tried again
BUSY_TIMEOUT_S = 60.0
T = TypeVar("T")
WRITE_ATTEMPTS = 5

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    variant TEXT NOT NULL,
    variant_slug TEXT NOT NULL,
    insertions TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'diverged', 'pruned')),
    config TEXT NOT NULL,
    primary_metric TEXT NOT NULL,
    params INTEGER,
    baseline_params INTEGER,
    epochs INTEGER,
    epochs_done INTEGER DEFAULT 0,
    best_epoch INTEGER,
    best_value REAL,
    final_metrics TEXT,
    best_metrics TEXT,
    history TEXT DEFAULT '[]',
    wall_time REAL DEFAULT 0,
    train_images_per_s REAL,
    device TEXT,
    error TEXT,
    started_at REAL,
    updated_at REAL,
    peak_memory_mb REAL,
    test_best_metrics TEXT,
    test_last_metrics TEXT,
    test_per_image TEXT,
    memory_retries TEXT
);
"""


def run_dir_files(run_dir: str | Path) -> tuple[Path, Path]:
    """``(experiment.yaml, runs.sqlite)`` of a run directory written by ``stitch run``; a
    :class:`~stitch.errors.StitchError` naming what is missing otherwise."""
    run_dir = Path(run_dir)
    exp_file, db = run_dir / "experiment.yaml", run_dir / "runs.sqlite"
    if not exp_file.is_file():
        raise StitchError(f"{run_dir}: no experiment.yaml (is this a run directory written by `stitch run`?)")
    if not db.is_file():
        raise StitchError(f"{run_dir}: no runs.sqlite (run `stitch run {exp_file}` first)")
    return exp_file, db


def runs_with_checkpoints(run_dir: str | Path) -> list[str]:
    """The run ids with at least one epoch checkpoint in ``run_dir/ckpt/<run_id>/epoch-*.pt``."""
    ckpt = Path(run_dir) / "ckpt"
    if not ckpt.is_dir():
        return []
    return sorted(d.name for d in ckpt.iterdir() if d.is_dir() and any(d.glob("epoch-*.pt")))


def check_not_lost(db: Path) -> None:
    """A one-line :class:`~stitch.errors.StitchError` when the database ``db`` is missing or
    empty (0 bytes) while its run directory holds runs' checkpoints: their rows are lost, and
    opening it as a new database would train every run again without a word. A missing or empty
    database without checkpoints is simply a new one."""
    if db.is_file() and db.stat().st_size > 0:
        return
    trained = runs_with_checkpoints(db.parent)
    if trained:
        state = "empty (0 bytes)" if db.is_file() else "missing"
        raise StitchError(
            f"{db}: the results database is {state} but {db.parent / 'ckpt'} holds the checkpoints of "
            f"{len(trained)} run(s); restore {db.name} from a copy, or train from scratch "
            "(`stitch run --force`, or move ckpt/ away)"
        )


def damaged_message(db: Path, detail: str) -> str:
    """The one line for a damaged results database: the file, what SQLite found, the fix."""
    detail = " ".join(detail.split())
    detail = detail if len(detail) <= 120 else detail[:117] + "..."
    return (
        f"{db}: the results database is damaged ({detail}); restore it from a copy, or move it "
        "away and train from scratch (`stitch run --force`, or move ckpt/ away)"
    )


#: SQLite's primary result codes for a file that is not (or no longer) a valid database
DAMAGED_CODES = (11, 26)  # SQLITE_CORRUPT ("malformed"), SQLITE_NOTADB ("not a database")


def database_error(db: Path, exc: Exception) -> StitchError:
    """The one-line error for a failed query on ``db``: a full disk, a damaged file (SQLite's
    "malformed" or "not a database", a JSON column that does not decode), or SQLite's own
    message (a lock held beyond the timeout, a read-only file)."""
    full = disk_full_error(exc, db)
    if full is not None:
        return full
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, ValueError) or (isinstance(code, int) and code & 0xFF in DAMAGED_CODES):
        return StitchError(damaged_message(db, str(exc)))
    return StitchError(f"{db}: {exception_text(exc, limit=200)} (the results database)")


@dataclass
class RunRow:
    """One run as stored (JSON columns decoded)."""

    run_id: str
    experiment: str
    variant: str
    variant_slug: str
    insertions: list[str]
    seed: int
    status: str
    config: dict[str, Any]
    primary_metric: str
    params: int | None = None
    baseline_params: int | None = None
    epochs: int | None = None
    epochs_done: int = 0
    best_epoch: int | None = None
    best_value: float | None = None
    final_metrics: dict[str, Any] | None = None
    best_metrics: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time: float = 0.0
    train_images_per_s: float | None = None
    device: str | None = None
    error: str | None = None
    started_at: float | None = None
    updated_at: float | None = None
    peak_memory_mb: float | None = None
    # the held-out test split, evaluated once the run finished: at the epoch val chose (best) and at
    # the last epoch; per image (segmentation: {"best": [confusion matrix per image], "last": ...})
    test_best_metrics: dict[str, Any] | None = None
    test_last_metrics: dict[str, Any] | None = None
    test_per_image: dict[str, Any] | None = None
    # CUDA out-of-memory retries (stitch.oom_retry), in order: {"epoch": the last completed epoch,
    # "batch_size": the new micro-batch, "grad_accum": the new accumulation, "error": one line}
    memory_retries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def micro_batch_changes(self) -> str:
        """The out-of-memory retries in a few words (``results.csv``): ``"4x2 from epoch 1; 2x4
        from epoch 3"`` (micro-batch x accumulation, and the first epoch trained so); empty without."""
        return "; ".join(
            f"{r['batch_size']}x{r['grad_accum']} from epoch {r['epoch'] + 1}" for r in self.memory_retries
        )


_JSON = (
    "insertions",
    "config",
    "final_metrics",
    "best_metrics",
    "history",
    "test_best_metrics",
    "test_last_metrics",
    "test_per_image",
    "memory_retries",
)
#: the row field holding the metrics a table or summary reports, by ``(split, report.selection)``:
#: the held-out test split at the chosen or the last epoch, or the validation split itself
METRIC_FIELDS = {
    ("test", "best"): "test_best_metrics",
    ("test", "last"): "test_last_metrics",
    ("val", "best"): "best_metrics",
    ("val", "last"): "final_metrics",
}


def reported_split(rows: Sequence[RunRow]) -> str:
    """``test`` when every run of ``rows`` was evaluated on a test split (``test_last_metrics`` is
    set whenever it was), else ``val``."""
    return "test" if rows and all(r.test_last_metrics for r in rows) else "val"


#: columns added after the first release, with their SQL type: added (empty) to older databases
ADDED_COLUMNS = {
    "peak_memory_mb": "REAL",
    "test_best_metrics": "TEXT",
    "test_last_metrics": "TEXT",
    "test_per_image": "TEXT",
    "memory_retries": "TEXT",
}


class ResultStore:
    """Read and write run rows in ``runs.sqlite``."""

    def __init__(self, path: str | Path, *, force: bool = False) -> None:
        """Open (or create) the database at ``path``, checked first (:func:`check_not_lost`, unless
        ``force``: ``stitch run --force`` trains every run again) and its pages verified with
        ``PRAGMA quick_check``; a damaged or unusable one is a one-line error naming the file."""
        self.path = Path(path)
        if not force:
            check_not_lost(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.guard():
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        try:
            with self.guard():
                retry_when_busy(self._prepare)
        except BaseException:
            self._conn.close()
            raise

    def _prepare(self) -> None:
        """Check the pages, switch to WAL, create or migrate the table."""
        self._conn.row_factory = sqlite3.Row
        problems = [r[0] for r in self._conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise StitchError(damaged_message(self.path, " ".join(" ".join(problems).split())))
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)
        self._conn.commit()
        self._migrate()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turns a SQLite error inside the block into a one-line error naming the database:
        :class:`~stitch.errors.DiskFullError` for a full disk, "damaged" for a malformed file,
        the SQLite message otherwise (a database locked for longer than the timeout)."""
        try:
            yield
        except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
            raise database_error(self.path, exc) from None

    def _migrate(self) -> None:
        """Databases written before the ``pruned`` status existed: the same table with the new
        status check (SQLite cannot alter a CHECK constraint in place), in one transaction; and
        the :data:`ADDED_COLUMNS` they lack added, empty."""
        sql = self._conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'runs'"
        ).fetchone()[0]
        if "'pruned'" not in sql:
            old = [r[1] for r in self._conn.execute("PRAGMA table_info(runs)")]
            cols = ", ".join(old)
            self._conn.executescript(
                "BEGIN IMMEDIATE; ALTER TABLE runs RENAME TO runs_before_pruned;"
                + SCHEMA
                + f"INSERT INTO runs ({cols}) SELECT {cols} FROM runs_before_pruned;"
                + " DROP TABLE runs_before_pruned; COMMIT;"
            )
        columns = {r[1] for r in self._conn.execute("PRAGMA table_info(runs)")}
        for name, sql_type in ADDED_COLUMNS.items():
            if name not in columns:
                with self._conn:
                    self._conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {sql_type}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, sql: str, args: tuple[Any, ...]) -> int:
        """Execute one writing statement in its own transaction (tried again while the database is
        busy: :func:`retry_when_busy`); returns how many rows it changed."""

        def once() -> int:
            with self._conn:
                return self._conn.execute(sql, args).rowcount

        return retry_when_busy(once)

    def get(self, run_id: str) -> RunRow | None:
        with self.guard():
            row = self._conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            return _decode(row) if row else None

    def rows(self, status: str | None = None) -> list[RunRow]:
        sql, args = "SELECT * FROM runs", cast(tuple[str, ...], ())
        if status:
            sql, args = sql + " WHERE status = ?", (status,)
        with self.guard():
            return [_decode(r) for r in self._conn.execute(sql + " ORDER BY started_at, run_id", args)]

    def start(self, row: RunRow) -> None:
        """Insert a new run or start it over (``--force``): every column is (re)written."""
        now = time.time()
        values = _encode(row)
        values.update(status="running", updated_at=now, started_at=now)
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values if c != "run_id")
        sql = f"INSERT INTO runs ({cols}) VALUES ({marks}) ON CONFLICT(run_id) DO UPDATE SET {updates}"
        with self.guard():
            self.write(sql, tuple(values.values()))

    def put(self, row: RunRow) -> None:
        """Write ``row`` exactly as given (every column, its status and times included), replacing a
        stored row of the same run id: the rows another worker of a distributed ablation trained."""
        values = _encode(row)
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self.guard():
            self.write(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", tuple(values.values()))

    def update(self, run_id: str, **fields: Any) -> None:
        """Set some columns of a run (JSON columns are encoded)."""
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown status {fields['status']!r}")
        fields["updated_at"] = time.time()
        enc = {k: (json.dumps(v, default=_jsonable) if k in _JSON else v) for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in enc)
        with self.guard():
            changed = self.write(f"UPDATE runs SET {sets} WHERE run_id = ?", (*enc.values(), run_id))
        if changed != 1:
            raise KeyError(f"no run {run_id!r} in {self.path}")


def retry_when_busy(write: Callable[[], T], attempts: int = WRITE_ATTEMPTS) -> T:
    """``write()`` (one transaction), called again when SQLite reports the database locked or busy
    after its own busy timeout, up to ``attempts`` times with a growing pause; the last error goes on."""
    for attempt in range(attempts):
        try:
            return write()
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or attempt == attempts - 1:
                raise
        time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def row_to_json(row: RunRow) -> dict[str, Any]:
    """``row`` as plain JSON data (tensor and NumPy numbers made plain), for a shared store."""
    return cast(dict[str, Any], json.loads(json.dumps(dataclasses.asdict(row), default=_jsonable)))


def row_from_json(data: dict[str, Any]) -> RunRow:
    """The :class:`RunRow` that :func:`row_to_json` wrote (fields it does not know are ignored)."""
    known = {f.name for f in dataclasses.fields(RunRow)}
    return RunRow(**{k: v for k, v in data.items() if k in known})


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _encode(row: RunRow) -> dict[str, Any]:
    d = dict(row.__dict__)
    for k in _JSON:
        d[k] = json.dumps(d[k], default=_jsonable) if d[k] is not None else None
    return d


def _decode(row: sqlite3.Row) -> RunRow:
    d = dict(row)
    for k in _JSON:
        if d.get(k) is not None:
            d[k] = json.loads(d[k])
    d["history"] = d.get("history") or []
    d["memory_retries"] = d.get("memory_retries") or []
    return RunRow(**d)


#: the run columns of ``results.csv``, in order (metrics follow as ``final_*``, ``best_*`` (val) and
#: ``test_best_*``, ``test_last_*`` (the test split at the epoch val chose / the last epoch))
CSV_COLUMNS = (
    "run_id",
    "variant",
    "seed",
    "status",
    "params",
    "baseline_params",
    "epochs",
    "epochs_done",
    "best_epoch",
    "best_value",
    "wall_time",
    "train_images_per_s",
    "peak_memory_mb",
    "device",
    "error",
    "micro_batch_changes",
)


def write_results_csv(store: ResultStore, path: Path, current: set[str]) -> None:
    """``results.csv``: one row per run, metrics flattened into columns (written atomically).
    ``current`` marks the runs of the experiment file as it is now (older configs stay listed)."""
    import pandas as pd

    records = []
    for r in store.rows():
        rec: dict[str, Any] = {"current": r.run_id in current}
        rec |= {k: getattr(r, k) for k in CSV_COLUMNS}
        rec["insertions"] = "+".join(r.insertions)
        for prefix, metrics in (
            ("final", r.final_metrics),
            ("best", r.best_metrics),
            ("test_best", r.test_best_metrics),
            ("test_last", r.test_last_metrics),
        ):
            for k, v in (metrics or {}).items():
                if isinstance(v, (int, float)):
                    rec[f"{prefix}_{k}"] = v
        records.append(rec)
    with atomic_path(path) as tmp:
        pd.DataFrame.from_records(records).to_csv(tmp, index=False)

"""Killing a process at chosen moments, without hooks in the code it runs (used by
``tests/test_crash_anywhere.py``).

A :class:`Trigger` says when to send SIGKILL: when the n-th temporary file of stitch's atomic
writer (:mod:`stitch.fileio`: ``.<name>.<random>.tmp<suffix>``) appears in the watched folders, so
the kill lands while a checkpoint, table or plot is being written; or a random delay after the
process shows it is working (its first new line in ``log.txt``). :func:`run_once` starts the
command, polls the run directory about every millisecond and kills when the trigger fires;
the :class:`KillPoint` it returns says which file was being written (and whether its temporary
file was still there after the kill, i.e. the kill cut the write), the phase (the last line
the process logged) and the time.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

#: a temporary file of :func:`stitch.fileio.atomic_path`: ``.`` + name + ``.`` + mkstemp's random
#: part + ``.tmp`` + the name's suffix
TMP_FILE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp(\.[A-Za-z0-9]+)?$")


@dataclass(frozen=True)
class Trigger:
    """When to kill: at the ``n``-th temporary file appearing in ``where`` (``ckpt``: the runs'
    checkpoint folders; ``report``: ``report/`` and the run directory itself, i.e. the report,
    ``costs.json`` and ``results.csv``), or ``delay`` seconds after the first new log line."""

    where: str = ""
    n: int = 0
    delay: float = 0.0

    def describe(self) -> str:
        return f"{self.where} write #{self.n}" if self.where else f"random, {self.delay:.2f} s after start-up"


@dataclass(frozen=True)
class KillPoint:
    """Where a kill landed."""

    trigger: Trigger
    seconds: float  # since the process was started
    file: str | None  # the temporary file seen (relative to the run directory), for write triggers
    final_name: str | None  # the file it was being written to
    cut: bool  # the temporary file was still there after the kill: the write was cut short
    phase: str  # the last line the process wrote to log.txt
    training: bool  # the runs were not all done when it started

    def line(self, number: int) -> str:
        if self.file is not None:
            how = "cut while writing" if self.cut else "just after writing"
            where = f"{how} {Path(self.file).parent / str(self.final_name)} (temporary {self.file})"
        else:
            where = "random moment"
        return (
            f"kill {number:2d} at {self.seconds:6.2f} s [{self.trigger.describe()}]: {where}; "
            f"last log line: {self.phase}"
        )


def watched_folders(run_dir: Path, where: str) -> list[Path]:
    """The folders a trigger watches for temporary files."""
    if where == "ckpt":
        ckpt = run_dir / "ckpt"
        try:
            return [Path(e.path) for e in os.scandir(ckpt) if e.is_dir()]
        except FileNotFoundError:
            return []
    return [run_dir, run_dir / "report"]


def temporary_files(folders: list[Path]) -> list[Path]:
    """The atomic writer's temporary files now in ``folders``."""
    found = []
    for folder in folders:
        try:
            with os.scandir(folder) as it:
                found += [Path(e.path) for e in it if TMP_FILE.match(e.name)]
        except FileNotFoundError:
            continue
    return found


def last_log_line(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log yet)"
    return lines[-1].split(" ", 3)[-1] if lines else "(empty log)"  # without the date and time


def run_once(
    cmd: list[str],
    env: dict[str, str],
    cwd: Path,
    run_dir: Path,
    trigger: Trigger | None,
    output: Path,
    training: bool = True,
) -> tuple[int, KillPoint | None]:
    """Run ``cmd`` (stdout and stderr to ``output``) and kill it when ``trigger`` fires; returns
    its exit status and the kill point (None when it ended by itself first). ``training`` is
    recorded in the kill point (whether runs were left to train when it started)."""
    log = run_dir / "log.txt"
    log_size = log.stat().st_size if log.exists() else 0
    where = trigger.where if trigger is not None else ""
    before = set(temporary_files(watched_folders(run_dir, where))) if where else set()
    seen: set[Path] = set()
    started_work: float | None = None
    with open(output, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)

        def kill(tmp: Path | None) -> tuple[int, KillPoint]:
            at = time.perf_counter() - start
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert trigger is not None
            name = TMP_FILE.match(tmp.name) if tmp is not None else None
            return proc.returncode, KillPoint(
                trigger,
                at,
                None if tmp is None else str(tmp.relative_to(run_dir)),
                name.group("name") if name else None,
                tmp is not None and tmp.exists(),
                last_log_line(log),
                training,
            )

        try:
            while proc.poll() is None:
                if trigger is not None and where:
                    fresh = [p for p in temporary_files(watched_folders(run_dir, where)) if p not in before]
                    seen.update(fresh)
                    if fresh and len(seen) >= trigger.n:
                        return kill(fresh[0])
                elif trigger is not None:
                    if started_work is None and log.exists() and log.stat().st_size > log_size:
                        started_work = time.perf_counter()
                    if started_work is not None and time.perf_counter() - started_work >= trigger.delay:
                        return kill(None)
                time.sleep(0.0005)
        finally:
            if proc.poll() is None:  # the test itself failed: leave no process behind
                proc.kill()
                proc.wait()
    return proc.returncode, None

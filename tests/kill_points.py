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

:class:`ForkServer` starts such processes quickly: one process imports stitch's command line
once and forks a child per command, which then runs exactly what ``python -m stitch ARGS`` runs
(the same ``sys.argv``, ``main()``, ``sys.exit`` and interpreter exit) without paying the imports
(torch, torchvision, pydantic, optuna: seconds per start on a 2-core machine) again.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
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
    server: ForkServer | None = None,
) -> tuple[int, KillPoint | None]:
    """Run ``cmd`` (stdout and stderr to ``output``) and kill it when ``trigger`` fires; returns
    its exit status and the kill point (None when it ended by itself first). ``training`` is
    recorded in the kill point (whether runs were left to train when it started). With a
    ``server``, ``cmd`` (``python -m stitch ARGS``) is started by it (its env and cwd apply)."""
    log = run_dir / "log.txt"
    log_size = log.stat().st_size if log.exists() else 0
    where = trigger.where if trigger is not None else ""
    before = set(temporary_files(watched_folders(run_dir, where))) if where else set()
    seen: set[Path] = set()
    started_work: float | None = None
    with open(output, "w") as out:
        start = time.perf_counter()
        proc: subprocess.Popen | Child
        if server is None:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        else:
            assert cmd[1:3] == ["-m", "stitch"], cmd
            proc = server.start(cmd[3:], output)

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


#: the fork server's program: import stitch's command line and the modules its commands import on
#: start (argv[1:]); then for each request line ``{"args": [...], "output": path, "errors": path
#: or null, "input": path or null, "code": str or null}`` fork a child that runs ``python -m stitch
#: ARGS`` (``python -c CODE ARGS`` when code is given) with stdin from ``input`` (null: empty),
#: stdout to ``output`` and stderr to ``errors`` (null: to ``output`` too). The
#: server answers ``{"pid": n}``, and ``{"code": c}`` once the child has ended (c < 0: the signal
#: that ended it, as subprocess reports it).
SERVER = r"""
import importlib, json, os, sys
import stitch.cli
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError:  # an optional dependency: its command imports it, or fails, as it would
        pass
main_path = os.path.join(os.path.dirname(stitch.cli.__file__), "__main__.py")
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the child: as ``python -m stitch ARGS`` (or ``python -c CODE ARGS``) after its imports
        out = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(request["errors"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if request["errors"] else out
        null = os.open(request["input"] or os.devnull, os.O_RDONLY)  # last: a FIFO waits for its writer
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in {null, out, err}:
            os.close(fd)
        sys.stdin = open(0, closefd=False)
        if request["code"] is not None:
            sys.argv = ["-c", *request["args"]]
            exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__"})
            sys.exit(0)
        sys.argv = [main_path, *request["args"]]
        sys.exit(stitch.cli.main())
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


#: what ``stitch run`` and ``stitch sweep`` of a tiny ``shapes`` U-Net experiment import as they
#: go (most of their start-up time when imported in each process)
PRELOAD = (
    "stitch.run",
    "stitch.sweep.runner",
    "stitch.sweep.outputs",
    "stitch.costs",
    "stitch.baselines.unet",
    "stitch.data.shapes",
    "stitch.data.transforms",
    "torchvision.transforms.v2",
    "matplotlib.pyplot",
    "pandas",
    "pandas.io.formats.style",
    "optuna.storages._rdb.models",
    "alembic.command",
    "alembic.migration",
)


class ForkServer:
    """A process that has imported stitch's command line (and ``preload``) and starts each
    ``stitch ARGS`` command as a forked child of itself: a real process of its own, killed and
    interrupted like ``python -m stitch ARGS``, but started in milliseconds. One command at a time;
    ``env`` and ``cwd`` are every command's; :meth:`close` ends it."""

    def __init__(self, env: dict[str, str], cwd: Path, preload: tuple[str, ...] = PRELOAD) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, *preload],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.received = b""  # read from the server, not yet answered

    def close(self) -> None:
        """End the server (after its running command, if any, which :meth:`Child.kill` ends)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def answer(self, timeout: float | None) -> dict[str, int] | None:
        """The server's next answer, or None when none came within ``timeout`` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()  # read unbuffered, so that select() sees every answer
        while b"\n" not in self.received:
            if timeout is not None and not select.select([fd], [], [], timeout)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the fork server ended (exit status {self.proc.wait()})")
            self.received += chunk
        line, self.received = self.received.split(b"\n", 1)
        return json.loads(line)

    def start(
        self,
        args: list[str],
        output: Path,
        errors: Path | None = None,
        code: str | None = None,
        stdin: Path | None = None,
    ) -> Child:
        """Start ``stitch ARGS`` (``python -c CODE ARGS`` with ``code``) with stdout to ``output``,
        stderr to ``errors`` (None: to ``output``) and stdin from ``stdin`` (None: empty; a FIFO
        blocks the child until it is opened for writing)."""
        assert self.proc.stdin is not None
        request = {
            "args": args,
            "output": str(output),
            "errors": None if errors is None else str(errors),
            "input": None if stdin is None else str(stdin),
            "code": code,
        }
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        answer = self.answer(None)
        assert answer is not None
        return Child(self, answer["pid"])


class Child:
    """A command started by a :class:`ForkServer`: the part of ``subprocess.Popen`` the kill tests use."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server, self.pid = server, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            answer = self.server.answer(0)
            if answer is not None:
                self.returncode = answer["code"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            answer = self.server.answer(timeout)
            if answer is None:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            self.returncode = answer["code"]
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and wait for the end (the server answers nothing else meanwhile)."""
        self.send_signal(signal.SIGKILL)
        self.wait()

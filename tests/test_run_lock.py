"""One process per run directory: a second `stitch run`/`report` refuses with one line naming the
first (or waits with --wait), a lock left by a SIGKILLed process is taken over, and `stitch run`'s
own report is written under its own lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kill_points import ForkServer
from yaml_snippets import tiny_shapes_unet

from stitch.cli import main
from stitch.run_lock import LOCK_FILE, RunDirLocked, run_dir_lock

#: holds the lock of argv[1] as "stitch run" until its stdin closes, or for argv[2] seconds
_HOLDER = textwrap.dedent("""\
    import sys, time
    from pathlib import Path
    from stitch.run_lock import run_dir_lock
    with run_dir_lock(Path(sys.argv[1]), "stitch run"):
        print("held", flush=True)
        if len(sys.argv) > 2:
            time.sleep(float(sys.argv[2]))
        else:
            sys.stdin.read()
""")


class Holder:
    """A real second process holding a run directory's lock (``_HOLDER``), forked by the module's
    :class:`ForkServer` (stitch.run_lock, which imports torch, imported once): its stdin is a FIFO
    this test writes, its stdout a file."""

    server: ForkServer | None = None  # set by the module's holder_server fixture
    folder: Path | None = None
    count = 0
    started: list[Holder] = []  # noqa: RUF012 -- every holder of the module, ended after each test

    def __init__(self, code: str, args: list[str]) -> None:
        assert self.server is not None and self.folder is not None, "needs the holder_server fixture"
        Holder.count += 1
        fifo, self.output = self.folder / f"stdin-{self.count}", self.folder / f"stdout-{self.count}"
        os.mkfifo(fifo)
        self.child = self.server.start(args, self.output, code=code, stdin=fifo)
        self.feed = open(fifo, "wb")  # noqa: SIM115 -- closed by release(): the child's stdin ends
        self.pid = self.child.pid
        Holder.started.append(self)

    def first_line(self) -> str:
        """The first line the holder printed (waits for it)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = self.output.read_text()
            if "\n" in text:
                return text.split("\n", 1)[0] + "\n"
            if self.child.poll() is not None:
                return text
            time.sleep(0.005)
        return self.output.read_text()

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    def wait(self, timeout: float | None = None) -> int:
        return self.child.wait(timeout)

    def release(self) -> None:
        """Close its stdin (it leaves the block) and wait for its end."""
        self.feed.close()
        self.child.wait(timeout=30)


@pytest.fixture(scope="module", autouse=True)
def holder_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    Holder.folder = tmp_path_factory.mktemp("holders")
    Holder.server = ForkServer({**os.environ, "OMP_NUM_THREADS": "1"}, Path.cwd(), ("stitch.run_lock",))
    try:
        yield
    finally:
        Holder.server.close()
        Holder.server = None


@pytest.fixture(autouse=True)
def end_holders() -> Iterator[None]:
    """After each test, no holder left running (the server forks the next one only then)."""
    yield
    while Holder.started:
        holder = Holder.started.pop()
        holder.feed.close()
        holder.child.kill()  # nothing when it has ended


def hold(run_dir: Path, seconds: float | None = None) -> Holder:
    """A real second process holding ``run_dir``'s lock (returned once it has it)."""
    holder = Holder(_HOLDER, [str(run_dir)] + ([str(seconds)] if seconds else []))
    assert holder.first_line() == "held\n"
    return holder


def release(holder: Holder) -> None:
    holder.release()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_second_process_is_refused_with_one_line_naming_the_first(tmp_path: Path) -> None:
    holder = hold(tmp_path)
    try:
        with pytest.raises(RunDirLocked) as info, run_dir_lock(tmp_path, "stitch report"):
            pytest.fail("entered a directory another live process holds")
    finally:
        release(holder)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path} is in use by pid {holder.pid} on {socket.gethostname()} ")
    assert "(stitch run, since " in message and " UTC)" in message
    assert message.endswith("; wait for it, or pass --wait")
    with run_dir_lock(tmp_path, "stitch report"):  # released with its process: free again
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["command"] == "stitch report"
    assert (tmp_path / LOCK_FILE).read_text() == ""  # no holder named once released
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]


def test_wait_prints_one_line_and_proceeds_once_the_holder_is_done(tmp_path: Path, capsys) -> None:
    holder = hold(tmp_path, seconds=2)
    start = time.monotonic()
    with run_dir_lock(tmp_path, "stitch run", wait=True):
        waited = time.monotonic() - start
    release(holder)
    assert waited > 1.0  # the holder slept 2 s with the lock
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"waiting for pid {holder.pid} on ") and err[0].endswith(
        f"to release {tmp_path}"
    )


def test_a_lock_left_by_a_sigkilled_process_is_taken_over(tmp_path: Path) -> None:
    holder = hold(tmp_path)
    stale = json.loads((tmp_path / LOCK_FILE).read_text())
    assert stale["pid"] == holder.pid
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text()) == stale  # its record is left behind
    start = time.monotonic()
    with run_dir_lock(tmp_path, "stitch run"):
        assert time.monotonic() - start < 0.5
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_forked_child_of_a_sigkilled_holder_does_not_keep_the_lock(tmp_path: Path) -> None:
    """DataLoader workers are forked children; one that outlives its killed parent for a few
    seconds must not keep the run directory locked."""
    script = textwrap.dedent("""\
        import multiprocessing, sys, time
        from pathlib import Path
        from stitch.run_lock import run_dir_lock
        with run_dir_lock(Path(sys.argv[1]), "stitch run"):
            child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
            child.start()
            print(child.pid, flush=True)
            time.sleep(60)
    """)
    holder = Holder(script, [str(tmp_path)])
    child = int(holder.first_line())
    try:
        with pytest.raises(RunDirLocked), run_dir_lock(tmp_path, "stitch run"):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the child still lives
        with run_dir_lock(tmp_path, "stitch run"):
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        os.kill(child, signal.SIGKILL)


def test_the_record_of_a_dead_process_is_never_quoted_as_the_holder(tmp_path: Path) -> None:
    """A new holder that has the lock but has not written its record yet, over the record of a
    killed one: the refusal names neither."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"pid": dead.pid, "host": socket.gethostname(), "command": "stitch run", "started": 0.0}
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    bare = textwrap.dedent("""\
        import fcntl, os, sys
        fd = os.open(sys.argv[1], os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", bare, str(tmp_path / LOCK_FILE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
    try:
        refused = pytest.raises(
            RunDirLocked, match=r"is in use by another process; wait for it, or pass --wait$"
        )
        with refused, run_dir_lock(tmp_path, "stitch run"):
            pass
    finally:
        proc.communicate(timeout=30)


def test_a_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError), run_dir_lock(tmp_path, "stitch run"):
        raise ValueError("boom")
    holder = hold(tmp_path)  # another process gets it at once
    release(holder)
    assert holder.returncode == 0


def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_lock.yaml"
    path.write_text(tiny_shapes_unet("tiny_lock", tmp_path / "data", epochs=1) + "seeds: [0]\n")
    return path


def test_stitch_run_on_a_locked_directory_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys
) -> None:
    exp = tiny(tmp_path)
    run_dir = tmp_path / "runs" / "tiny_lock"
    run_dir.mkdir(parents=True)
    holder = hold(run_dir)
    try:
        before = snapshot(run_dir)
        assert main(["run", str(exp), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
        assert snapshot(run_dir) == before  # not even experiment.yaml
    finally:
        release(holder)
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {run_dir} is in use by pid {holder.pid} ")
    assert "stitch run" in err[0] and "results:" not in captured.out
    assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]


def test_report_refuses_a_locked_run_directory_and_run_writes_its_own_report(tmp_path: Path, capsys) -> None:
    exp = tiny(tmp_path)
    run_dir = tmp_path / "runs" / "tiny_lock"
    assert main(["run", str(exp), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "report not written" not in out and f"report: {run_dir / 'report'}" in out  # under its own lock
    assert (run_dir / "report" / "provenance.json").is_file()
    assert (run_dir / LOCK_FILE).read_text() == ""  # released

    holder = hold(run_dir)
    try:
        before = snapshot(run_dir)
        assert main(["report", str(run_dir), "--no-latency", "--out", str(tmp_path / "rep")]) == 2
        assert snapshot(run_dir) == before and not (tmp_path / "rep").exists()
    finally:
        release(holder)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {run_dir} is in use by pid {holder.pid} ")
    assert err[0].endswith("wait for it, or pass --wait")

    holder = hold(run_dir, seconds=1)
    assert main(["report", str(run_dir), "--no-latency", "--out", str(tmp_path / "rep"), "--wait"]) == 0
    release(holder)
    captured = capsys.readouterr()
    assert captured.err.startswith(f"waiting for pid {holder.pid} ") and captured.err.count("\n") == 1
    assert (tmp_path / "rep" / "provenance.json").is_file()


def test_stitch_sweep_on_a_locked_directory_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    """Sweep workers each use their own --out (docs/sweeps.md), so a sweep locks like a run."""
    exp = tmp_path / "tiny_lock.yaml"
    sweep = "sweep:\n  trials: 1\n  sampler: random\n  slots:\n    - {name: A, at: [enc1], modules: [SE]}\n"
    exp.write_text(tiny_shapes_unet("tiny_lock", tmp_path / "data", epochs=1) + sweep)
    run_dir = tmp_path / "runs" / "tiny_lock"
    run_dir.mkdir(parents=True)
    holder = hold(run_dir)
    try:
        assert main(["sweep", str(exp), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    finally:
        release(holder)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {run_dir} is in use by pid {holder.pid} ")
    assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]  # nothing written, not even experiment.yaml


def test_report_of_several_directories_refuses_when_any_is_locked(tmp_path: Path, capsys) -> None:
    exp = tiny(tmp_path)
    first, second = tmp_path / "a" / "tiny_lock", tmp_path / "b" / "tiny_lock"
    for d in (first, second):
        d.mkdir(parents=True)
        (d / "experiment.yaml").write_text(exp.read_text())
        (d / LOCK_FILE).touch()  # as a run leaves it
    holder = hold(second)
    try:
        assert main(["report", str(first), str(second), "--no-latency"]) == 2
    finally:
        release(holder)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {second} is in use by pid {holder.pid} ")
    assert (first / LOCK_FILE).read_text() == ""  # the first one's lock was released again


def test_a_failing_report_of_a_directory_without_a_lock_file_creates_none(tmp_path: Path, capsys) -> None:
    """A directory no run ever locked (a hand-made or older one): nothing to share, nothing written."""
    run_dir = tmp_path / "tiny_lock"
    run_dir.mkdir()
    (run_dir / "experiment.yaml").write_text(tiny(tmp_path).read_text())
    assert main(["report", str(run_dir), "--no-latency"]) == 2
    assert "no runs.sqlite" in capsys.readouterr().err
    assert [p.name for p in run_dir.iterdir()] == ["experiment.yaml"]

"""The bad-input corpus (tests/bad_inputs/): every case is one line on stderr, exit code 2 and
nothing written. How to add a case: tests/bad_inputs/README.md."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stitch.cli import main

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "case.yaml").is_file())
KEYS = {"command", "argv", "exit", "message", "usage", "data", "written", "why"}
COMMANDS = {"validate", "run", "sweep", "points", "report", "show"}


def load_case(name: str) -> dict[str, Any]:
    """The case's ``case.yaml``, checked for known keys and a command."""
    spec = yaml.safe_load((CORPUS / name / "case.yaml").read_text(encoding="utf-8"))
    assert isinstance(spec, dict) and set(spec) <= KEYS, f"{name}: unknown keys {set(spec) - KEYS}"
    assert spec.get("command") in COMMANDS, f"{name}: command must be one of {sorted(COMMANDS)}"
    assert isinstance(spec.get("message"), str), f"{name}: message (the exact stderr line) is missing"
    return spec


def generators() -> Any:
    """The module ``tests/bad_inputs/generators.py`` (not a package: loaded from its file)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bad_input_generators", CORPUS / "generators.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def experiment_name(case: Path) -> str:
    """The ``name:`` of the case's experiment file (for the default report/show argv), else 'x'."""
    try:
        data = yaml.safe_load((case / "experiment.yaml").read_text(encoding="utf-8"))
        return str(data["name"])
    except Exception:
        return "x"


def default_argv(command: str, case: Path) -> list[str]:
    """What the case runs when it gives no ``argv`` (see the README's table)."""
    if command in ("run", "sweep"):
        return [command, "experiment.yaml", "--out", "out", "--quiet"]
    if command in ("report", "show"):
        return [command, f"out/{experiment_name(case)}"]
    return [command, "experiment.yaml"]


def snapshot(folder: Path) -> dict[str, str] | None:
    """Every file under ``folder`` with the hash of its bytes (directories as ``dir``), or None."""
    if not folder.exists() and not folder.is_symlink():
        return None
    if not folder.is_dir():
        return {".": hashlib.sha256(folder.read_bytes()).hexdigest()}
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        out[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def prepare(name: str, tmp_path: Path) -> tuple[dict[str, Any], Path, list[str], str]:
    """Copy the case to ``tmp_path``, run its generator; return spec, folder, argv, expected line."""
    spec = load_case(name)
    case = tmp_path / name
    shutil.copytree(CORPUS / name, case)
    data = spec.get("data") or []
    for item in data if isinstance(data, list) else [data]:
        kwargs = dict(item) if isinstance(item, dict) else {"generator": item}
        getattr(generators(), kwargs.pop("generator"))(case, **kwargs)
    argv = [fill(str(a), case) for a in spec.get("argv") or default_argv(spec["command"], case)]
    assert argv[0] == spec["command"], f"{name}: argv must start with the command"
    return spec, case, argv, fill(spec["message"], case)


def fill(text: str, case: Path) -> str:
    """``{case}`` and ``{out}`` replaced by the case's folders (other braces are left alone)."""
    return text.replace("{case}", str(case)).replace("{out}", str(case / "out"))


def check_stderr(name: str, spec: dict[str, Any], err: str, expected: str) -> None:
    lines = err.rstrip("\n").splitlines()
    assert lines, f"{name}: nothing on stderr"
    if spec.get("usage"):
        assert lines[0].startswith("usage:"), lines
    else:
        assert len(lines) == 1, f"{name}: stderr is not one line:\n{err}"
    assert lines[-1] == expected, f"{name}:\n got: {lines[-1]}\nwant: {expected}"


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name: str, tmp_path: Path, capsys, monkeypatch) -> None:
    spec, case, argv, expected = prepare(name, tmp_path)
    monkeypatch.chdir(case)
    monkeypatch.setenv("STITCH_DATA", str(case / "stitch-data"))
    before = snapshot(case / "out")
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == spec.get("exit", 2), f"{name}: exit {code}\n{err}"
    check_stderr(name, spec, err, expected)
    if spec.get("written", "nothing") == "nothing":
        assert snapshot(case / "out") == before, f"{name}: the command wrote into out/"


def test_the_corpus_is_there_and_every_folder_is_a_case() -> None:
    folders = [p for p in CORPUS.iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert [p.name for p in folders if not (p / "case.yaml").is_file()] == []
    assert len(CASES) >= 100


def test_one_case_through_the_real_command(tmp_path: Path) -> None:
    """The same line and exit code from ``python -m stitch`` in a fresh process."""
    spec, case, argv, expected = prepare("lr-inf", tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "stitch", *argv],
        cwd=case,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    check_stderr("lr-inf", spec, proc.stderr, expected)

"""The ``stitch`` command's polish: --debug and --quiet anywhere, one version string, help texts
with examples and exit codes, shell completion, and the README promising only the table formats
that ``report.formats`` writes by default."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import stitch
from stitch.cli import main, make_parser
from stitch.cli_help import EXAMPLES
from stitch.config.schema_design import DEFAULT_FORMATS
from stitch.errors import StitchError

ROOT = Path(__file__).resolve().parents[1]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def help_text(*words: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        make_parser().parse_args([*words, "--help"])
    return out.getvalue()


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "--quiet", "run", "exp.yaml"],
        ["run", "exp.yaml", "--debug", "--quiet"],
        ["--debug", "run", "exp.yaml", "--quiet"],
        ["--quiet", "sweep", "exp.yaml", "--debug"],
        ["report", "runs/x", "--debug", "--quiet"],
        ["validate", "exp.yaml", "--quiet", "--debug"],
        ["--debug", "--quiet", "zoo"],
    ],
)
def test_debug_and_quiet_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = make_parser().parse_args(argv)
    assert args.debug is True and args.quiet is True


@pytest.mark.parametrize("argv", [["run", "exp.yaml"], ["zoo"], ["show", "runs/x"]])
def test_debug_and_quiet_default_off(argv: list[str]) -> None:
    args = make_parser().parse_args(argv)
    assert args.debug is False and args.quiet is False


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path: Path, capsys) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(StitchError, match="no such experiment file"):
        main(["validate", missing, "--debug"])
    assert main(["validate", missing]) == 2  # without it: one line
    assert capsys.readouterr().err.count("\n") == 1


def test_the_version_is_written_once() -> None:
    version = stitch.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "stitch.__version__"}
    files = [ROOT / "pyproject.toml", ROOT / "Makefile", *ROOT.glob("stitch/**/*.py")]
    files += ROOT.glob("modules_zoo/**/*.py")
    literal = re.compile(rf"""["']v?{re.escape(version)}["']""")
    found = [f.relative_to(ROOT).as_posix() for f in files for _ in literal.finditer(f.read_text("utf-8"))]
    assert found == ["stitch/__init__.py"]


def test_version_option_prints_the_one_version(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"stitch {stitch.__version__}\n"
    assert importlib.metadata.version("stitch") == stitch.__version__  # the installed metadata agrees


@pytest.mark.parametrize("command", ["", *subcommands()])
def test_every_help_ends_with_examples_and_exit_codes(command: str) -> None:
    text = help_text(*([command] if command else []))
    examples = text.split("\nexamples:\n", 1)
    assert len(examples) == 2, f"`stitch {command} --help` has no examples block"
    lines = examples[1].split("\nexit codes:\n", 1)
    assert len(lines) == 2, f"`stitch {command} --help` lists no exit codes after the examples"
    assert re.search(rf"^  .*\bstitch {command}", lines[0], re.M), "no example of the command itself"
    for code in ("0", "2", "130"):
        assert re.search(rf"^  {code} ", lines[1], re.M), f"exit code {code} not explained"


@pytest.mark.parametrize("command", ["", *subcommands()])
def test_examples_parse_and_name_existing_files(command: str) -> None:
    assert command in EXAMPLES, f"`stitch {command}` has no examples in stitch/cli_help.py"
    for line in EXAMPLES[command]:
        words = shlex.split(line.split(">")[0].replace('eval "$(', "").rstrip(')"'))
        assert words[0] == "stitch", line
        if "--help" not in words:
            make_parser().parse_args(words[1:])  # a usage error exits the test
        for word in words:
            if word.startswith("experiments/") and "*" not in word:
                assert (ROOT / word).exists(), f"example {line!r} names a missing file"


def bash_complete(script: str, words: list[str], cwd: Path) -> list[str]:
    """What the completion ``script`` offers for the last of ``words`` (bash)."""
    call = (
        f"source /dev/stdin; COMP_WORDS=({shlex.join(words)}); COMP_CWORD={len(words) - 1}; "
        'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}; _shtab_stitch; echo "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(
        ["bash", "-c", call], input=script, capture_output=True, text=True, cwd=cwd, check=True
    )
    return proc.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes_commands_options_and_files(tmp_path: Path, capsys) -> None:
    pytest.importorskip("shtab", reason="shtab is not installed: pip install 'stitch[completion]'")
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    (tmp_path / "exp.yaml").write_text("")
    (tmp_path / "runs").mkdir()
    assert bash_complete(script, ["stitch", "r"], tmp_path) == ["run", "report"]
    assert bash_complete(script, ["stitch", "run", "exp.yaml", "--qu"], tmp_path) == ["--quiet"]
    assert bash_complete(script, ["stitch", "run", "ex"], tmp_path) == ["exp.yaml"]  # files
    assert bash_complete(script, ["stitch", "report", ""], tmp_path) == ["runs"]  # directories only
    assert main(["completion", "zsh"]) == 0
    assert "#compdef stitch" in capsys.readouterr().out


def test_completion_without_shtab_is_one_line_naming_the_extra(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "shtab", None)  # import shtab raises ImportError
    assert main(["completion", "bash"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "error: shell completion needs shtab: pip install 'stitch[completion]' (or pip install shtab)\n"
    )


def sentences_naming(text: str, word: str) -> list[str]:
    flat = re.sub(r"\s+", " ", text)
    return [s for s in re.split(r"(?<=[.;:])\s", flat) if word in s]


@pytest.mark.parametrize(
    "where",
    ["README.md", "docs/reports.md", "stitch --help", "stitch report --help"],
    ids=lambda w: w.split("/")[-1],
)
def test_html_is_promised_only_as_a_report_formats_choice(where: str) -> None:
    assert "html" not in DEFAULT_FORMATS  # else the README may promise HTML tables outright
    if where.startswith("stitch"):
        text = help_text(*where.split()[1:-1])
    else:
        text = (ROOT / where).read_text("utf-8")
    vague = [s for s in sentences_naming(text, "HTML") if "report.formats" not in s]
    assert not vague, f"{where} names HTML tables without saying report.formats must list html: {vague}"

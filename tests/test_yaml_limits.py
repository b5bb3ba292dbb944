"""An experiment file cannot crash or exhaust the loader: not UTF-8, nested too deep, an alias
inside its own anchor, an alias bomb: each is one line and exit 2, quickly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stitch.cli import main
from stitch.config import load_experiment
from stitch.config.yaml_limits import MAX_DEPTH, MAX_NODES

ROOT = Path(__file__).resolve().parents[1]
HEAD = "name: x\ntask: segmentation\nbaseline: {model: unet}\n"


def bomb(levels: int) -> str:
    """Each level an alias list of nine copies of the one before: 9**levels values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return HEAD + "\n".join(lines) + "\n"


CASES = {
    "latin-1": (
        (ROOT / "experiments" / "unet_coordatt.yaml")
        .read_text(encoding="utf-8")
        .replace("nuclei sample.", "nuclei sample \xe9.")
        .encode("latin-1"),
        "bad.yaml:4: not UTF-8 text (byte 0xe9 at offset",
    ),
    "3000 brackets": (
        (HEAD + "x: " + "[" * 3000 + "]" * 3000 + "\n").encode(),
        "nested too deeply for a YAML parser",
    ),
    "100 brackets": (
        (HEAD + "x: " + "[" * 100 + "]" * 100 + "\n").encode(),
        f"nested more than {MAX_DEPTH} levels",
    ),
    "self alias": (
        (HEAD + "x: &a [*a]\n").encode(),
        "bad.yaml:4: an alias refers to the anchor it is inside",
    ),
    "alias bomb": (bomb(9).encode(), f"expands to more than {MAX_NODES:,} values"),
    "deep via alias": (
        (HEAD + "a: &a " + "[" * 40 + "1" + "]" * 40 + "\nb: " + "[" * 40 + "*a" + "]" * 40 + "\n").encode(),
        f"nested more than {MAX_DEPTH} levels",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_yaml_is_one_line_and_exit_2(tmp_path: Path, capsys, case: str) -> None:
    data, message = CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_bytes(data)
    start = time.perf_counter()
    assert main(["validate", str(path)]) == 2
    assert time.perf_counter() - start < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_ordinary_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        HEAD
        + "x-args: &args {reduction: 16}\n"
        + "insertions:\n"
        + "  - {name: A, module: SE, at: enc1, args: *args}\n"
        + "  - {name: B, module: SE, at: enc2, args: *args}\n"
    )
    with pytest.raises(Exception, match="x-args"):  # the schema, not the loader, rejects the extra key
        load_experiment(path)
    path.write_text(path.read_text().replace("x-args: &args {reduction: 16}\n", "").replace("*args", "{}"))
    assert len(load_experiment(path).cfg.insertions) == 2
    path.write_text(bomb(4))  # 9**4 = 6561 values: well within the bound, rejected only as unknown keys
    with pytest.raises(Exception, match="a0"):
        load_experiment(path)

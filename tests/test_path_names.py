"""Names from the experiment file that end up in paths (the experiment's name: the run directory;
insertion names: variant slugs in tb/ folders and `stitch show` files; sweep slot names; the
sweep's study name) cannot leave the run directory: a name with a separator, ``..``, an absolute
path, a control character or too many characters is refused at validation with one line, and
what is accepted stays one path component of a safe length. End to end, every path a run, a
report, `stitch show` and a sweep create lies inside ``--out/<name>``."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
from yaml_snippets import tiny_shapes_unet

from stitch.cli import main
from stitch.config import ExperimentCfg, load_experiment
from stitch.config.base import NAME_PATTERN
from stitch.errors import ConfigError
from stitch.plan import plan_variants

HEAD = "name: x\ntask: segmentation\nbaseline: {model: unet}\n"
HOSTILE = {
    "parent": "..",
    "dot": ".",
    "up and out": "../../escape",
    "absolute": "/tmp/escape",
    "separator": "a/b",
    "backslash": "a\\b",
    "hidden": ".hidden",
    "tab": "a\tb",
    "newline": "a\nb",
    "escape": "a\x1bb",
    "nul": "a\x00b",
    "empty": "",
    "space": "a b",
    "too long": "n" * 300,
}
FIELDS = {
    "experiment name": lambda n: HEAD.replace("name: x", f"name: {n}"),
    "insertion name": lambda n: HEAD + f"insertions:\n  - {{name: {n}, module: SE, at: enc1}}\n",
    "sweep slot name": lambda n: HEAD + f"sweep:\n  slots:\n    - {{name: {n}, at: [enc1], modules: [SE]}}\n",
}


def quoted(name: str) -> str:
    """``name`` as a double-quoted YAML scalar (escapes for backslash, quotes, control characters)."""
    body = "".join(c if " " <= c <= "~" and c not in '"\\' else f"\\x{ord(c):02x}" for c in name)
    return f'"{body}"'


@pytest.mark.parametrize("field", list(FIELDS))
@pytest.mark.parametrize("hostile", list(HOSTILE))
def test_a_name_that_could_leave_the_run_directory_is_refused(
    tmp_path: Path, field: str, hostile: str
) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(FIELDS[field](quoted(HOSTILE[hostile])))
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert "name" in message


def random_names(rng: random.Random, count: int, longest: int) -> list[str]:
    first = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    rest = first + "_.-"
    return [
        rng.choice(first) + "".join(rng.choices(rest, k=rng.randint(0, longest - 1))) for _ in range(count)
    ]


def test_every_accepted_name_is_one_path_component_inside_out(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    rng = random.Random(0)
    for name in random_names(rng, 500, 100) + ["a..", "a.", "A-", "0", "a" * 100]:
        assert re.fullmatch(NAME_PATTERN, name)
        ExperimentCfg.model_validate({"name": name, "task": "segmentation", "baseline": {"model": "unet"}})
        run_dir = out / name
        assert run_dir.resolve().parent == out.resolve() and name not in (".", "..")
        assert len(name.encode()) <= 255


@pytest.mark.parametrize("design", ["none", "one-at-a-time", "leave-one-out", "full-factorial"])
def test_every_variant_slug_is_one_safe_path_component(design: str) -> None:
    rng = random.Random(design)
    for _ in range(20):
        names = list(dict.fromkeys(random_names(rng, rng.randint(1, 6), 24)))
        cfg = ExperimentCfg.model_validate(
            {
                "name": "x",
                "task": "segmentation",
                "baseline": {"model": "unet"},
                "insertions": [{"name": n, "module": "SE", "at": "enc1"} for n in names],
                "ablation": design,
            }
        )
        for variant in plan_variants(cfg):
            slug = variant.slug
            assert re.fullmatch(r"[a-z0-9][a-z0-9+._-]*", slug), (variant.name, slug)
            assert os.sep not in slug and slug not in (".", "..")


def assert_inside(root: Path, top: Path) -> list[Path]:
    """Every path under ``top`` resolves inside ``root`` and has no component over 255 bytes."""
    created = sorted(top.rglob("*"))
    for path in created:
        assert path.resolve().is_relative_to(root.resolve()), path
        assert all(len(part.encode()) <= 255 for part in path.relative_to(top).parts), path
    return created


LONG_POINTS = ["enc1", "enc2", "enc3", "enc4", "bottleneck", "dec4", "dec3", "dec2", "dec1", "up1"]


def test_a_run_report_and_show_with_the_longest_names_stay_inside_the_run_directory(tmp_path: Path) -> None:
    """A 100-character experiment name and ten 24-character insertion names (a 249-character variant
    slug) through run, report and show: every file inside --out/<name>, every name short enough."""
    name = "E" * 100
    insertions = "".join(
        f"  - {{name: {chr(65 + i) * 24}, module: SE, at: {p}}}\n" for i, p in enumerate(LONG_POINTS)
    )
    path = tmp_path / "long.yaml"
    path.write_text(tiny_shapes_unet(name, tmp_path / "data", 1) + "insertions:\n" + insertions)
    out = tmp_path / "runs"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    run_dir = out / name
    assert main(["report", str(run_dir), "--no-latency"]) == 0
    all_variant = "+" + " +".join(chr(65 + i) * 24 for i in range(len(LONG_POINTS)))
    assert main(["show", str(run_dir), "--variant", all_variant, "--n", "2"]) == 0
    created = assert_inside(run_dir, out)
    assert any(p.name.startswith("show_") for p in created)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "long.yaml", "runs"]
    assert [p.name for p in out.iterdir()] == [name]


@pytest.mark.parametrize("study", ["../../escape", "/tmp/escape", "a/b\tc"])
def test_a_sweep_study_name_is_only_a_key_in_the_study_storage(tmp_path: Path, study: str) -> None:
    path = tmp_path / "sweep.yaml"
    sweep = "sweep:\n  trials: 1\n  slots:\n    - {name: s, at: [enc1], modules: [SE]}\n"
    path.write_text(tiny_shapes_unet("tiny_sweep", tmp_path / "data", 1) + sweep)
    out = tmp_path / "runs"
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--study", study]) == 0
    assert_inside(out / "tiny_sweep", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "runs", "sweep.yaml"]

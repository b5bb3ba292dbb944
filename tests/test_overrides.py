"""Command-line overrides (``key.path=value``) and ``stitch config``: values set in the raw YAML
before the schema check, the same one-line errors, the same run ids as the file written out."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from yaml_snippets import tiny_shapes_unet

from stitch.cli import main, make_parser, parse_command_line
from stitch.config import Experiment, load_experiment, parse_experiment
from stitch.config.writing import resolved_yaml
from stitch.errors import ConfigError
from stitch.runs import open_run_dir, plan_runs

ROOT = Path(__file__).resolve().parents[1]
INSERTIONS = """\
insertions:
  - {name: SE, module: SE, at: "enc*"}
seeds: [0]
"""


def experiment(
    tmp_path: Path, name: str = "ov", epochs: int = 1, extra: str = INSERTIONS, file: str = ""
) -> Path:
    path = tmp_path / (file or f"{name}.yaml")
    path.write_text(tiny_shapes_unet(name, tmp_path / "data", epochs) + textwrap.dedent(extra))
    return path


def value_at(exp: Experiment, dotted: str) -> Any:
    node: Any = exp.cfg.model_dump(mode="json")
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        (["train.epochs=3"], "train.epochs", 3),
        (["train.optimizer.lr=0.001"], "train.optimizer.lr", 0.001),
        (["train.amp=true"], "train.amp", True),
        (["train.clip_grad_norm=1.5"], "train.clip_grad_norm", 1.5),
        (["train.clip_grad_norm=1.5", "train.clip_grad_norm=null"], "train.clip_grad_norm", None),
        (["seeds=[0,1]"], "seeds", [0, 1]),
        (["seeds=[0,1]", "seeds.1=5"], "seeds", [0, 5]),
        (["insertions.0.at=enc2"], "insertions.0.at", "enc2"),
        (["insertions[0].args={rd_ratio: 0.5}"], "insertions.0.args", {"rd_ratio": 0.5}),
        (["report.formats=[latex,csv]"], "report.formats", ["latex", "csv"]),
        (["description=two words"], "description", "two words"),
        (["baseline.args.base_width=8"], "baseline.args", {"base_width": 8}),
    ],
)
def test_overrides_set_nested_keys_lists_and_typed_values(
    tmp_path: Path, overrides: list[str], key: str, expected: Any
) -> None:
    assert value_at(load_experiment(experiment(tmp_path), overrides), key) == expected


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epocs=3", "command line: train.epocs: unknown key 'epocs' — did you mean 'epochs'?"),
        ("trian.epochs=3", "command line: trian: unknown key 'trian' — did you mean 'train'?"),
        ("train.epochs=many", "command line: train.epochs: Input should be a valid integer (got 'many')"),
        ("train.epochs=", "command line: 'train.epochs=' has no value after '='"),
        ("=3", "command line: '=3' has no key before '='"),
        ("train.epochs", "command line: 'train.epochs' is not key.path=value (for example train.epochs=3)"),
        ("train..epochs=3", "command line: 'train..epochs=3': 'train..epochs' is not a key path"),
        ("seeds=[0, 1", "command line: 'seeds=[0, 1': the value is not valid YAML"),
        ("seeds.4=1", "command line: 'seeds.4=1': seeds is a list of 1 item (0); 4 is not one of them"),
        ("task.kind=x", "command line: 'task.kind=x': task is 'segmentation', not a mapping or a list"),
        ("metrics.report.0=miou", "command line: 'metrics.report.0=miou': metrics.report is not given"),
        ("extends=base.yaml", "command line: 'extends=base.yaml': base files cannot be set on the command"),
    ],
)
def test_override_mistakes_are_one_line_errors(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_experiment(experiment(tmp_path), [override])
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_a_value_from_the_command_line_is_checked_like_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_experiment(experiment(tmp_path), ["train.optimizer.name=adamm"])
    assert str(err.value) == (
        "command line: train.optimizer.name: 'adamm' is not one of sgd, adam, adamw"
        " — did you mean 'adam' or 'adamw'?"
    )


def test_an_override_has_the_run_id_of_the_same_value_in_the_file(tmp_path: Path) -> None:
    overridden = load_experiment(experiment(tmp_path, "ids", epochs=1), ["train.epochs=2", "seeds=[0,1]"])
    two_seeds = INSERTIONS.replace("seeds: [0]", "seeds: [0, 1]")
    written = load_experiment(experiment(tmp_path, "ids", epochs=2, extra=two_seeds, file="written.yaml"))
    assert [p.run_id for p in plan_runs(overridden)] == [p.run_id for p in plan_runs(written)]
    assert len(plan_runs(written)) == 4
    plain = load_experiment(experiment(tmp_path, "ids", epochs=1, file="plain.yaml"))
    assert not {p.run_id for p in plan_runs(plain)} & {p.run_id for p in plan_runs(written)}


def test_the_run_directory_keeps_the_overridden_experiment(tmp_path: Path) -> None:
    exp = load_experiment(experiment(tmp_path), ["train.epochs=4"])
    stored = open_run_dir(exp, tmp_path / "runs") / "experiment.yaml"
    text = stored.read_text()
    assert text.startswith(f"# {tmp_path / 'ov.yaml'}, composed by stitch\n# command line: train.epochs=4\n")
    assert load_experiment(stored).cfg == exp.cfg
    plain = load_experiment(experiment(tmp_path, file="plain.yaml"))
    assert plain.text is None  # a file used as written is copied as it is, comments and all
    copy = open_run_dir(plain, tmp_path / "plain_runs") / "experiment.yaml"
    assert copy.read_text() == (tmp_path / "plain.yaml").read_text()


def test_overrides_are_taken_before_and_after_options() -> None:
    argv = ["run", "e.yaml", "train.epochs=2", "--quiet", "seeds=[1]", "--out", "o"]
    args = parse_command_line(make_parser(), argv)
    assert (args.experiment, args.overrides, args.out) == ("e.yaml", ["train.epochs=2", "seeds=[1]"], "o")
    with pytest.raises(SystemExit):
        parse_command_line(make_parser(), ["zoo", "--json", "train.epochs=2"])  # zoo takes none


def test_stitch_config_prints_every_default_and_loads_back(tmp_path: Path, capsys) -> None:
    path = experiment(tmp_path)
    assert main(["config", str(path), "--quiet", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    data = yaml.safe_load(out)
    assert data["train"]["epochs"] == 3 and data["train"]["keep_last"] == 2  # keep_last: a default
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    assert load_experiment(printed).cfg == load_experiment(path, ["train.epochs=3"]).cfg


@pytest.mark.parametrize("example", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_the_resolved_example_experiments_load_back_unchanged(example: Path) -> None:
    exp = load_experiment(example)
    assert parse_experiment(resolved_yaml(exp.cfg), "resolved").cfg == exp.cfg


def test_stitch_config_mistakes_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    assert main(["config", str(experiment(tmp_path)), "train.epocs=3"]) == 2
    err = capsys.readouterr().err
    assert err == "error: command line: train.epocs: unknown key 'epocs' — did you mean 'epochs'?\n"


def test_validate_applies_the_overrides_to_each_file(tmp_path: Path, capsys) -> None:
    path = experiment(tmp_path)
    assert main(["validate", str(path), "--out", str(tmp_path / "runs"), "seeds=[0,1,2]"]) == 0
    assert "x 3 seeds [0, 1, 2] = 6 runs" in capsys.readouterr().out

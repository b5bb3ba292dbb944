"""``extends: base.yaml`` / ``_base_:``: deep merge (the file wins, lists replaced), chains, cycles,
missing bases, errors placed in the file that wrote the value, and overrides applied last."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from stitch.config import load_experiment
from stitch.errors import ConfigError

BASE = """\
name: base
task: segmentation
baseline:
  model: unet
  args: {in_channels: 3, num_classes: 3, base_width: 8}
train:
  epochs: 5
  batch_size: 4
  optimizer: {name: sgd, lr: 0.1}
seeds: [0, 1, 2]
probe: {image_size: [32, 32]}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_a_file_merges_over_its_base_mappings_deep_and_lists_replaced(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    exp = load_experiment(
        write(
            tmp_path,
            "exp.yaml",
            """\
            extends: base.yaml
            name: child
            baseline: {args: {base_width: 16}}
            train: {optimizer: {lr: 0.01}}
            seeds: [7]
            """,
        )
    )
    cfg = exp.cfg
    assert cfg.name == "child"
    assert cfg.baseline.model == "unet"
    assert cfg.baseline.args == {"in_channels": 3, "num_classes": 3, "base_width": 16}
    assert (cfg.train.epochs, cfg.train.batch_size) == (5, 4)
    assert (cfg.train.optimizer.name, cfg.train.optimizer.lr) == ("sgd", 0.01)
    assert cfg.seeds == [7]  # a list is replaced, not merged
    assert exp.text is not None and "# bases: " in exp.text
    stored = write(tmp_path, "stored.yaml", exp.text)
    assert load_experiment(stored).cfg == cfg  # the composed text is the experiment as run


def test_bases_chain_and_underscore_base_and_a_list_merge_in_order(tmp_path: Path) -> None:
    write(tmp_path, "configs/base.yaml", BASE)
    write(tmp_path, "configs/long.yaml", "_base_: base.yaml\ntrain: {epochs: 50}\n")
    write(tmp_path, "configs/many_seeds.yaml", "seeds: [0, 1, 2, 3, 4]\ntrain: {epochs: 9}\n")
    exp = load_experiment(
        write(tmp_path, "exps/e.yaml", "extends: [../configs/long.yaml, ../configs/many_seeds.yaml]\n")
    )
    assert exp.cfg.name == "base"  # from the base of the base
    assert exp.cfg.train.epochs == 9  # the later base wins
    assert exp.cfg.seeds == [0, 1, 2, 3, 4]
    assert exp.cfg.train.batch_size == 4


def test_overrides_apply_after_the_bases(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    path = write(tmp_path, "exp.yaml", "extends: base.yaml\ntrain: {epochs: 2}\n")
    assert load_experiment(path, ["train.epochs=3", "seeds=[4]"]).cfg.train.epochs == 3
    assert load_experiment(path, ["seeds=[4]"]).cfg.seeds == [4]


@pytest.mark.parametrize(
    ("files", "start", "message"),
    [
        (
            {"a.yaml": "extends: b.yaml\nname: a\n", "b.yaml": "_base_: a.yaml\ntask: segmentation\n"},
            "a.yaml",
            "b.yaml:1: _base_: a cycle of base files: {d}/a.yaml -> {d}/b.yaml -> {d}/a.yaml",
        ),
        (
            {"self.yaml": "extends: self.yaml\n"},
            "self.yaml",
            "a cycle of base files: {d}/self.yaml -> {d}/self.yaml",
        ),
        (
            {"m.yaml": "name: m\nextends: missing.yaml\n"},
            "m.yaml",
            "m.yaml:2: extends: base file 'missing.yaml' does not exist ({d}/missing.yaml; the path is relative to",
        ),
        (
            {"two.yaml": "extends: a.yaml\n_base_: b.yaml\n"},
            "two.yaml",
            "two.yaml:2: _base_: give the base files once, as 'extends:' or '_base_:', not both",
        ),
        ({"n.yaml": "extends: 3\n"}, "n.yaml", "n.yaml:1: extends: a base file's path (or a list of them)"),
    ],
)
def test_base_file_mistakes_are_one_line_errors(
    tmp_path: Path, files: dict[str, str], start: str, message: str
) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(ConfigError) as err:
        load_experiment(tmp_path / start)
    assert message.format(d=tmp_path) in str(err.value)
    assert "\n" not in str(err.value)


def test_a_mistake_is_reported_in_the_file_that_wrote_it(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE.replace("batch_size: 4", "batch_sise: 4"))
    path = write(tmp_path, "exp.yaml", "extends: base.yaml\nname: child\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert str(err.value) == (
        f"{tmp_path}/base.yaml:8: train.batch_sise: unknown key 'batch_sise' — did you mean 'batch_size'?"
    )
    with pytest.raises(ConfigError, match=r"exp\.yaml:2: train\.epochs: Input should be greater than 0"):
        load_experiment(write(tmp_path, "exp.yaml", "extends: base.yaml\ntrain: {epochs: 0}\n"))

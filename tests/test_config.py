"""The experiment schema: strict keys, types and values, errors with line numbers and suggestions."""

from __future__ import annotations

import pytest

from stitch.config import data_keys_by_dataset, parse_experiment, schema_keys
from stitch.errors import ConfigError

BASE = "name: x\ntask: segmentation\nbaseline:\n  model: unet\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_experiment(text, "exp.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        (BASE + "trian: {epochs: 3}\n", "exp.yaml:5: trian: unknown key 'trian' — did you mean 'train'"),
        (
            BASE + "train:\n  epochs: 3\n  optimiser: {lr: 0.1}\n",
            "exp.yaml:7: train.optimiser: unknown key 'optimiser' — did you mean 'optimizer'?",
        ),
        (
            BASE + "data:\n  dataset: nuclei\n  tiel: 64\n",
            "exp.yaml:7: data.tiel: unknown key 'tiel' — did you mean 'tile'?",
        ),
        (BASE + "data: {dataset: nucleii}\n", "unknown dataset 'nucleii'"),
        (
            "name: x\ntask: seg\nbaseline: {model: unet}\n",
            "exp.yaml:2: task: 'seg' is not one of segmentation, instance — did you mean 'segmentation'?",
        ),
        (BASE + "train: {epochs: -1}\n", "exp.yaml:5: train.epochs: Input should be greater than 0 (got -1)"),
        (BASE + "train: {epochs: ten}\n", "train.epochs: Input should be a valid integer"),
        (BASE + "seeds: [1, 1]\n", "exp.yaml:5: seeds: seeds repeat"),
        (BASE + "ablation: one-at-a-tim\n", "did you mean 'one-at-a-time'?"),
        (BASE + "ablation: {design: subsets}\n", "design 'subsets' needs a 'subsets:' list"),
        (
            BASE + "insertions:\n  - {name: CA, module: CoordAtt, at: enc1, mode: aftr}\n",
            "exp.yaml:6: insertions[0].mode: insertion 'CA': "
            "'aftr' is not one of after, before, residual, replace — did you mean 'after'?",
        ),
        (
            BASE + "insertions:\n  - {name: CA, module: CoordAtt, at: enc1, mode: nest}\n",
            "nesting is written as a 'nest:' list",
        ),
        (
            BASE + "insertions:\n  - {name: CA, module: CoordAtt, at: []}\n",
            "insertions[0].at: insertion 'CA': needs at least one hook point",
        ),
        (
            BASE + "insertions:\n  - {name: CA, module: CoordAtt, at: enc1}\n"
            "  - {name: CA, module: SE, at: enc2}\n",
            "exp.yaml:7: insertions[1].name: insertion name 'CA' is used twice",
        ),
        (
            BASE + "insertions:\n  - {name: CA, module: CoordAtt, at: enc1}\n"
            "ablation:\n  design: subsets\n  subsets: [[CA], [CAA]]\n",
            "exp.yaml:9: ablation.subsets[1][0]: no insertion is named 'CAA' — did you mean 'CA'?",
        ),
        (BASE + "metrics: {primary: mIoU}\n", "unknown segmentation metric 'mIoU' — did you mean 'miou'?"),
        (
            "name: x\ntask: segmentation\nbaseline: {modell: unet}\n",
            "exp.yaml:3: baseline.modell: unknown key 'modell' — did you mean 'model'?",
        ),
        ("name: x\ntask: segmentation\n", "required key 'baseline' is missing"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("name: [\n", "not valid YAML"),
    ],
)
def test_user_mistakes_give_one_line_with_place_and_hint(text: str, expected: str) -> None:
    message = error_of(text)
    assert expected in message
    assert "\n" not in message


def test_only_safe_yaml_is_loaded() -> None:
    assert "not valid YAML" in error_of("name: !!python/object/apply:os.system ['echo hacked']\n")


def test_defaults_and_shorthands() -> None:
    exp = parse_experiment(
        BASE
        + "ablation: leave-one-out\ndata: {dataset: shapes, image_size: 64}\ntrain: {optimizer: {lr: 1e-3}}\n"
    )
    cfg = exp.cfg
    assert cfg.ablation.design == "leave-one-out"
    assert cfg.data.image_size == (64, 64)
    assert cfg.train.optimizer.lr == pytest.approx(1e-3)  # PyYAML reads 1e-3 as a string
    assert cfg.seeds == [0] and cfg.primary_metric == "miou"
    assert cfg.probe_image_size == (64, 64)


def test_every_key_of_the_schema_has_a_line() -> None:
    exp = parse_experiment(
        BASE + "insertions:\n  - name: CA\n    module: CoordAtt\n    at: [enc1, enc2]\n", "e.yaml"
    )
    assert exp.source.line(("insertions", 0, "at")) == 8
    assert exp.source.line(("insertions", 0, "at", 1)) == 8
    assert exp.source.line(("insertions", 0, "args")) == 6  # absent key: its parent's line


def test_schema_keys_list_every_key_path_of_the_models() -> None:
    keys = schema_keys()
    for key in (
        "name",
        "train",
        "train.optimizer",
        "train.optimizer.lr",
        "baseline.args",
        "insertions[].name",
        "insertions[].nest[].module",
        "insertions[].nest[].nest",
        "data.tile",
        "data.augment.scale",
        "sweep.slots[].args",
        "sweep.objectives[].metric",
        "probe.image_size",
    ):
        assert key in keys, key
    # free mappings are not looked into, a block nested in itself is expanded once
    assert not any(
        k.startswith(("baseline.args.", "sweep.train.", "insertions[].nest[].nest[]")) for k in keys
    )
    leaves = schema_keys(leaves_only=True)
    assert "train.optimizer.lr" in leaves and "train.optimizer" not in leaves and "data" not in leaves
    assert leaves < keys


def test_data_keys_by_dataset_split_the_data_keys() -> None:
    by_dataset = data_keys_by_dataset()
    assert set(by_dataset) == {"nuclei", "shapes", "folder", "voc", "coco", "brain"}
    assert "data.tile" in by_dataset["nuclei"] and "data.tile" not in by_dataset["shapes"]
    assert all("data.image_size" in keys for keys in by_dataset.values())
    assert set().union(*by_dataset.values()) | {"data"} == {
        k for k in schema_keys() if k.split(".")[0] == "data"
    }


FULL = """\
name: full
task: segmentation
description: every block
baseline: {model: unet, args: {base_width: 4}}
data:
  dataset: folder
  root: /r
  class_names: [a, b]
  augment: {scale: [0.5, 2], rotate90: true}
train: {epochs: 2, optimizer: {lr: 0.01}, scheduler: {name: step, milestones: [1]}}
insertions:
  - name: A
    module: SE
    at: [enc1, enc2]
    mode: residual
    nest: [{module: CA, at: x, nest: [{module: B, at: y}]}]
ablation: {design: subsets, subsets: [[A]]}
seeds: [0, 1]
metrics: {primary: miou, report: [mdice]}
report: {caption: c, formats: [csv]}
probe: {image_size: 32}
sweep:
  slots: [{name: s, at: [p, q], modules: [SE], args: {SE: {rd: [1, 2]}}}]
  train: {optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}}
  objectives: [miou, {metric: params, direction: minimize}]
"""


def test_every_key_of_a_full_experiment_is_a_listed_key() -> None:
    free = (
        "baseline.args",
        "insertions[].args",
        "insertions[].nest[].args",
        "sweep.train",
        "sweep.slots[].args",
    )
    found = set()
    for path in parse_experiment(FULL).source.lines:
        while path and isinstance(path[-1], int):  # items of a list of values
            path = path[:-1]
        key = "".join("[]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        key = key.replace("nest[].nest[]", "nest[]")  # a block nested in itself is listed once
        if key and not any(key.startswith(f + ".") for f in free):
            found.add(key)
    assert len(found) > 40
    assert found <= schema_keys()


@pytest.mark.parametrize("label", ["tab:x}\\input{/etc/passwd}", "tab x", "tab:50%", "tab:$a$"])
def test_a_report_label_cannot_carry_latex(label: str) -> None:
    text = f'name: x\ntask: segmentation\nbaseline: {{model: unet}}\nreport: {{label: "{label}"}}\n'
    with pytest.raises(ConfigError, match=r"report.label: label .* may hold only letters, digits"):
        parse_experiment(text.replace("\\", "\\\\"))
    ok = text.replace(f'"{label}"', "tab:unet_ablation-2/a.b+c")
    assert parse_experiment(ok).cfg.report.label == "tab:unet_ablation-2/a.b+c"

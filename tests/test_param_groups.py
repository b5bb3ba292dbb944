"""Optimiser parameter groups for fine-tuning: which parameters are stitched, no weight decay on
norm and bias parameters, learning-rate multipliers by prefix / alias / ``inserted``, their
errors, and run ids that stay put where training does not change."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from yaml_snippets import TINY_UNET, tiny_shapes_unet

from stitch.build import stitch_variant
from stitch.cli import main
from stitch.config import load_experiment, parse_experiment
from stitch.engine import train
from stitch.errors import ConfigError
from stitch.param_groups import baseline_names, optimizer_params, stitched_parameter_names
from stitch.runs import experiment_data, plan_runs
from stitch.tasks import make_task

STITCHED = """\
insertions:
  - {name: SE, module: SE, at: enc1, mode: after}
  - {name: CA, module: CoordAtt, at: enc2, mode: residual, residual_scale: 0.5}
  - {name: EC, module: ECA, at: enc3, mode: before}
  - {name: CB, module: CBAM, at: dec1, mode: replace}
  - {name: CGA, module: CGAFusion, at: skip1}
  - {name: SE2, module: SE, at: enc1, mode: after}
"""


def experiment(extra: str = "", optimizer: str = ""):
    text = TINY_UNET + (f"train:\n  optimizer: {optimizer}\n" if optimizer else "") + STITCHED + extra
    return parse_experiment(text, "exp.yaml")


def old_stitched_names(built) -> list[str]:
    """stitch.validate's rule before this module existed (by wrapper attribute names)."""
    replaced = [a.point for a in built.applied if a.mode == "replace"]
    return [
        n
        for n, _ in built.model.named_parameters()
        if "added" in n.split(".")
        or n.split(".")[-1] == "scale"
        or any(n.startswith(r + ".") for r in replaced)
    ]


def test_baseline_names_strip_wrappers_and_mark_every_stitched_parameter() -> None:
    exp = experiment()
    built = stitch_variant(exp, None, 0)
    plain = stitch_variant(exp, "Baseline", 0).model
    replaced = [a.point for a in built.applied if a.mode == "replace"]
    names = baseline_names(built.model, replaced)
    assert stitched_parameter_names(built) == old_stitched_names(built)
    assert names["enc1.base.base.0.weight"] == "enc1.0.weight"  # two wrappers at one point
    assert names["enc2.scale"] is None and names["enc2.base.1.0.weight"] == "enc2.1.0.weight"
    assert all(names[n] is None for n in names if n.startswith(("dec1.", "skip1.")))
    kept = {b for b in names.values() if b is not None}
    assert kept == {n for n, _ in plain.named_parameters() if not n.startswith("dec1.")}


def test_norm_and_bias_parameters_get_no_weight_decay_by_default() -> None:
    exp = experiment()
    built = stitch_variant(exp, None, 0)
    groups = optimizer_params(exp, built)
    by_decay = {g["weight_decay"]: g["params"] for g in groups}
    assert set(by_decay) == {0.0, 1e-4} and all(g["lr"] == 1e-3 and g["lr_mult"] == 1.0 for g in groups)
    assert all(p.ndim <= 1 for p in by_decay[0.0]) and all(p.ndim > 1 for p in by_decay[1e-4])
    trainable = [p for p in built.model.parameters() if p.requires_grad]
    assert sorted(map(id, trainable)) == sorted(id(p) for g in groups for p in g["params"])


@pytest.mark.parametrize("optimizer", ["{decay_norm_bias: true}", "{weight_decay: 0.0}"])
def test_without_groups_the_optimiser_gets_the_plain_parameter_list(optimizer: str) -> None:
    exp = experiment(optimizer=optimizer)
    built = stitch_variant(exp, None, 0)
    params = optimizer_params(exp, built)
    assert [id(p) for p in params] == [id(p) for p in built.model.parameters() if p.requires_grad]


def test_lr_mult_longest_prefix_wins_aliases_resolve_and_inserted_is_its_own() -> None:
    exp = experiment(
        optimizer="{decay_norm_bias: true, lr_mult: {stem: 0.1, enc1.0: 0.5, dec: 0.2, inserted: 2.0}}"
    )
    with pytest.raises(ConfigError, match=r"'dec' matches no parameter"):
        optimizer_params(exp, stitch_variant(exp, None, 0))
    exp = experiment(optimizer="{decay_norm_bias: true, lr_mult: {stem: 0.1, enc1.0: 0.5, inserted: 2.0}}")
    built = stitch_variant(exp, None, 0)
    groups = optimizer_params(exp, built)
    mult = {id(p): g["lr_mult"] for g in groups for p in g["params"]}
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_mult"]) for g in groups)
    params = dict(built.model.named_parameters())
    assert mult[id(params["enc1.base.base.0.weight"])] == 0.5  # enc1.0 is longer than stem (enc1)
    assert mult[id(params["enc1.base.base.1.weight"])] == 0.1
    assert mult[id(params["enc1.added.fc1.weight"])] == 2.0  # inserted, though inside enc1
    assert mult[id(params["enc2.base.1.0.weight"])] == 1.0


@pytest.mark.parametrize(
    "lr_mult, message",
    [
        (
            "{encoder: 0.1}",
            "exp.yaml:9: train.optimizer.lr_mult.encoder: 'encoder' matches no parameter of the unet "
            "baseline; keys are module-path prefixes (enc1, enc2, enc3, enc4, bottleneck, up4, dec4, up3, "
            "dec3, up2, dec2, up1, head), hook-point aliases (stem) or 'inserted' (the stitched "
            "modules) — did you mean 'enc4' or 'enc3' or 'enc2'?",
        ),
        ("{skip2: 0.1}", "lr_mult.skip2: 'skip2' matches no parameter of the unet baseline; keys are"),
        ("{dec1.9: 0.1}", "lr_mult.dec1.9: 'dec1.9' matches no parameter"),  # in the Baseline variant
        ("{stem: 0.1, enc1: 0.2}", "train.optimizer.lr_mult.enc1: names the same module as 'stem' (enc1)"),
    ],
)
def test_bad_lr_mult_keys_are_one_line_errors(lr_mult: str, message: str) -> None:
    exp = experiment(optimizer=f"\n    lr_mult: {lr_mult}")
    with pytest.raises(ConfigError) as err:
        for variant in (None, "Baseline"):  # dec1 is replaced in the first: a key inside it matches nothing
            optimizer_params(exp, stitch_variant(exp, variant, 0))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_lr_mult_key_stops_stitch_run_before_training(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    text = (
        tiny_shapes_unet("bad", tmp_path / "data", 1)
        + "  optimizer: {lr_mult: {backbone: 0.1}}\nseeds: [0]\n"
    )
    path.write_text(text)
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lr_mult.backbone: 'backbone' matches no parameter" in err
    assert not (tmp_path / "runs" / "bad").exists()


def test_training_with_groups_scales_each_rate_and_logs_the_base_rate(tmp_path: Path) -> None:
    path = tmp_path / "groups.yaml"
    text = tiny_shapes_unet("groups", tmp_path / "data", 1) + textwrap.dedent("""\
          optimizer: {lr: 0.01, lr_mult: {enc1: 0.1, inserted: 3.0}}
          scheduler: {name: none}
        insertions:
          - {name: SE, module: SE, at: "enc*"}
        seeds: [0]
    """)
    path.write_text(text)
    exp, data = experiment_data(load_experiment(path))
    built = stitch_variant(exp, None, 0)
    task = make_task(exp.cfg.task, data, exp.cfg.train.loss)
    args = (task, data.train, data.val, exp.cfg.train, 0, torch.device("cpu"), tmp_path, "miou")
    state = train(built.model, *args, param_groups=optimizer_params(exp, built))
    assert state.epoch == 1 and state.history[0]["lr"] == 0.01  # the base rate
    ckpt = torch.load(tmp_path / "epoch-0001.pt", weights_only=False)
    lrs = {(g["lr_mult"], g["weight_decay"]): g["lr"] for g in ckpt["optimizer"]["param_groups"]}
    assert lrs == {
        (0.1, 1e-4): pytest.approx(1e-3),
        (0.1, 0.0): pytest.approx(1e-3),
        (1.0, 1e-4): 0.01,
        (1.0, 0.0): 0.01,
        (3.0, 1e-4): pytest.approx(0.03),
        (3.0, 0.0): pytest.approx(0.03),
    }


def test_run_ids_change_only_where_groups_change_training(tmp_path: Path) -> None:
    def ids(optimizer: str) -> list[str]:
        text = tiny_shapes_unet("ids", tmp_path / "data") + f"  optimizer: {optimizer or '{}'}\n" + STITCHED
        return [p.run_id for p in plan_runs(parse_experiment(text, "ids.yaml"))]

    old = ids("{decay_norm_bias: true}")  # every parameter decayed alike: the ids of before
    assert len(old) == 2 and old == ids("{decay_norm_bias: true, lr_mult: {}}")
    assert ids("{weight_decay: 0.0}") == ids("{weight_decay: 0.0, decay_norm_bias: true}")
    assert not set(old) & set(ids(""))  # no decay on norm/bias params: trains differently
    assert not set(old) & set(ids("{decay_norm_bias: true, lr_mult: {stem: 0.1}}"))
    text = tiny_shapes_unet("ids", tmp_path / "data") + "  optimizer: {decay_norm_bias: true}\n"
    config = plan_runs(parse_experiment(text, "ids.yaml"))[0].config["train"]["optimizer"]
    assert set(config) == {"name", "lr", "weight_decay", "momentum"}  # as before the options existed

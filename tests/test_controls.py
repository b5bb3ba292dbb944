"""Matched controls (ablation.controls): planned variants, parameter counts, the zoo modules."""

from __future__ import annotations

import pytest
import torch

import modules_zoo
from modules_zoo.controls import TOLERANCE, MatchedBottleneck, matched_layout, module_params
from stitch.build import baseline_of, build_baseline, run_baseline
from stitch.config import parse_experiment
from stitch.plan import Variant, control_insertions, plan_variants, variant_insertions
from stitch.runs import plan_runs
from stitch.surgery import Applied, Insertion, stitch

INSERTIONS = """
data: {dataset: shapes, num_images: 16, image_size: [32, 32], num_classes: 3}
insertions:
  - {name: CA, module: CoordAtt, args: {reduction: 32}, at: "enc*", mode: after}
  - {name: SE, module: SE, at: [enc2, dec1], mode: residual}
"""


def stitched(exp, variant: Variant) -> list[Applied]:
    """What stitching ``variant`` applies (the declared insertions or their controls)."""
    spec = baseline_of(exp)
    model = build_baseline(exp, 0, spec)
    batch = spec.example_batch(exp.cfg.baseline.args, 2, exp.cfg.probe_image_size)
    chosen = [Insertion(i.name, i, ("insertions", k)) for k, i in variant_insertions(exp.cfg, variant)]
    return stitch(model, spec.aliases(model), lambda m: run_baseline(exp, spec, m, batch), chosen, 0)


def test_controls_off_by_default_plan_and_run_ids_unchanged(tiny_unet) -> None:
    plain = tiny_unet(INSERTIONS + "ablation: one-at-a-time\n")
    ctl = tiny_unet(INSERTIONS + "ablation: {design: one-at-a-time, controls: [matched, identity]}\n")
    assert control_insertions(plain.cfg) == []
    before = {(p.variant.name, p.seed): p.run_id for p in plan_runs(plain)}
    after = {(p.variant.name, p.seed): p.run_id for p in plan_runs(ctl)}
    assert {k: after[k] for k in before} == before  # the design's runs keep their ids
    assert [v.name for v in plan_variants(ctl.cfg)] == [
        "Baseline",
        "+CA",
        "+SE",
        "+CA +SE",
        "+CA (ctl)",
        "+SE (ctl)",
        "+CA (id)",
        "+SE (id)",
    ]


def test_control_keeps_points_mode_and_names_its_module(tiny_unet) -> None:
    exp = tiny_unet(INSERTIONS + "ablation: {controls: [matched, identity]}\n")
    by_name = {ins.name: (k, ins) for k, ins in control_insertions(exp.cfg)}
    k, ca = by_name["CA (ctl)"]
    assert k == 0 and ca.module == "MatchedBottleneck" and ca.at == "enc*" and ca.mode == "after"
    assert ca.args == {"match": "CoordAtt", "match_args": {"reduction": 32}, "skip": True}
    k, se = by_name["SE (id)"]
    assert k == 1 and se.module == "Identity" and se.mode == "residual" and se.args == {}
    assert by_name["SE (ctl)"][1].args["skip"] is False  # the residual wrapper adds x itself


@pytest.mark.parametrize("name", ["CA", "SE"])
def test_matched_control_has_the_parameters_of_its_module_per_point(tiny_unet, name: str) -> None:
    exp = tiny_unet(INSERTIONS + "ablation: {design: one-at-a-time, controls: [matched, identity]}\n")
    real = stitched(exp, Variant(f"+{name}", (name,)))
    ctl = stitched(exp, Variant(f"+{name} (ctl)", (f"{name} (ctl)",)))
    placebo = stitched(exp, Variant(f"+{name} (id)", (f"{name} (id)",)))
    assert [(a.point, a.mode) for a in ctl] == [(a.point, a.mode) for a in real]
    assert [(a.point, a.mode) for a in placebo] == [(a.point, a.mode) for a in real]
    for r, c in zip(real, ctl, strict=True):
        assert abs(c.params - r.params) <= TOLERANCE * r.params, (r.point, r.params, c.params)
    total_real, total_ctl = sum(a.delta for a in real), sum(a.delta for a in ctl)
    assert abs(total_ctl - total_real) <= TOLERANCE * total_real
    assert all(a.params == 0 for a in placebo)


@pytest.mark.parametrize(
    "match", [("CoordAtt", {"reduction": 32}), ("SE", {}), ("EffectiveSE", {}), ("GC", {})]
)
def test_matched_control_at_unet_widths(match: tuple[str, dict]) -> None:
    name, args = match
    for c in (8, 16, 32, 64, 128, 256, 512):
        m = modules_zoo.get("MatchedBottleneck").build({"channels": c}, {"match": name, "match_args": args})
        assert isinstance(m, MatchedBottleneck)
        got = sum(p.numel() for p in m.parameters())
        assert m.target_params == module_params(name, c, args)
        assert abs(got - m.target_params) <= TOLERANCE * m.target_params, (name, c)
        r, b1, bn, b2 = matched_layout(c, m.target_params)
        assert got == 2 * c * r + b1 * r + bn * 2 * r + b2 * c


def test_no_bottleneck_comes_near_a_module_with_a_handful_of_parameters() -> None:
    with pytest.raises(ValueError, match="within 1 % of ECA's 3 parameters"):
        modules_zoo.get("MatchedBottleneck").build({"channels": 16}, {"match": "ECA"})


def test_control_forward_and_rng_untouched() -> None:
    m = MatchedBottleneck(16, match="SE", skip=True)
    x = torch.randn(2, 16, 8, 8)
    torch.nn.init.zeros_(m.expand.weight)
    if m.expand.bias is not None:
        torch.nn.init.zeros_(m.expand.bias)
    assert torch.equal(m(x), x)  # x + block(x), the block silenced
    m.skip = False
    assert m(x).abs().max() == 0
    torch.manual_seed(0)
    state = torch.get_rng_state()
    module_params("CoordAtt", 32, {})  # counting the matched module draws no random numbers here
    assert torch.equal(torch.get_rng_state(), state)
    assert modules_zoo.get("Identity").build({"channels": 16}, {})(x) is x


def test_no_control_for_fusion_or_nested_or_replace() -> None:
    text = (
        "name: x\ntask: segmentation\nbaseline: {model: unet}\n"
        "ablation: {controls: [matched]}\ninsertions:\n"
        "  - {name: F, module: CGAFusion, at: skip1, mode: replace}\n"
        "  - {name: N, module: SE, at: enc1, nest: [{module: SE, at: fc1}]}\n"
    )
    assert control_insertions(parse_experiment(text).cfg) == []
    with pytest.raises(ValueError, match="fusion module"):
        module_params("CGAFusion", 16, {})


def test_controls_listed_twice_is_an_error() -> None:
    text = (
        "name: x\ntask: segmentation\nbaseline: {model: unet}\nablation: {controls: [identity, identity]}\n"
    )
    with pytest.raises(Exception, match="lists a control twice"):
        parse_experiment(text)


def test_matched_control_of_a_size_dependent_module_gets_the_point_size(tiny_unet) -> None:
    """BoT's relative positions (and Lambda's with r: null) depend on H, W: the control's fit hook
    passes the point's size on, so it matches the module built there (no 'BoT needs feat_size')."""
    exp = tiny_unet(
        "insertions:\n"
        "  - {name: B, module: BoT, at: [enc2, enc3], mode: after}\n"
        "  - {name: L, module: Lambda, args: {r: null}, at: enc3, mode: residual}\n"
        "ablation: {design: one-at-a-time, controls: [matched]}\n"
    )
    for name in ("B", "L"):
        real = stitched(exp, Variant(f"+{name}", (name,)))
        ctl = stitched(exp, Variant(f"+{name} (ctl)", (f"{name} (ctl)",)))
        assert [(a.point, a.mode) for a in ctl] == [(a.point, a.mode) for a in real]
        for r, c in zip(real, ctl, strict=True):
            assert abs(c.params - r.params) <= TOLERANCE * r.params, (r.point, r.params, c.params)
    # the size counts: BoT's (2H - 1) x dim_head and (2W - 1) x dim_head tables (dim_head 32 / 4)
    assert module_params("BoT", 32, {}, (16, 16)) - module_params("BoT", 32, {}, (8, 8)) == 2 * (31 - 15) * 8
    with pytest.raises(ValueError, match="BoT needs feat_size"):
        module_params("BoT", 32, {})


def test_control_feat_size_stays_out_of_run_configurations() -> None:
    """``feat_size`` (added to MatchedBottleneck later, filled by its fit hook) is not recorded at
    its default, so controls planned before it keep their run ids."""
    from stitch.runs import resolved_insertion

    ins = {"name": "SE (ctl)", "module": "MatchedBottleneck", "at": "enc1", "args": {"match": "SE"}}
    assert resolved_insertion(ins)["args"] == {"match": "SE", "match_args": None, "skip": True}

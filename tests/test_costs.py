"""stitch.costs: FLOPs agree with FlopCounterMode, params and deltas with stitch_variant, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stitch import costs as costs_mod
from stitch.build import build_baseline, stitch_variant
from stitch.costs import (
    cached_costs,
    count_flops,
    example_input,
    input_size,
    measure_latency,
    variant_costs,
    with_deltas,
)
from stitch.plan import Variant, plan_variants

INSERTIONS = """\
insertions:
  - {name: SE, module: SE, at: "enc*"}
  - {name: CGA, module: CGAFusion, at: "skip*"}
ablation: one-at-a-time
"""


def test_flops_of_a_tiny_unet_match_flop_counter_mode(tiny_unet) -> None:
    exp = tiny_unet()
    model = build_baseline(exp, 0).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    assert count_flops(model, x) == fc.get_total_flops() > 0
    c = variant_costs(exp, Variant("Baseline", ()), latency=False)
    assert c.flops == fc.get_total_flops()
    assert c.image_size == (32, 32) and c.in_channels == 3 and c.batch_size == 1 and c.latency_ms is None


def test_input_follows_data_then_probe_then_default(tiny_unet, write_experiment) -> None:
    assert input_size(tiny_unet()) == (32, 32)  # probe
    exp = tiny_unet("data: {dataset: shapes, image_size: [48, 64]}\n")
    assert input_size(exp) == (48, 64)  # data wins: what training used
    assert example_input(exp).shape == (1, 3, 48, 64)
    from stitch.config import load_experiment

    plain = load_experiment(
        write_experiment(
            "name: d\ntask: segmentation\nbaseline: {model: unet, args: {in_channels: 1, base_width: 4}}\n",
            "d.yaml",
        )
    )
    assert input_size(plain) == (64, 64) and example_input(plain).shape == (1, 1, 64, 64)


def test_stitched_params_and_deltas_match_stitch_variant(tiny_unet) -> None:
    exp = tiny_unet(INSERTIONS)
    variants = plan_variants(exp.cfg)
    got = with_deltas({v.name: variant_costs(exp, v, seed=1, latency=False) for v in variants}, "Baseline")
    for v in variants:
        built = stitch_variant(exp, v, seed=1)
        assert got[v.name].params == built.params
        assert got[v.name].params_delta == built.delta == built.params - built.baseline_params
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            built.model.eval()(torch.rand(1, 3, 32, 32))
        assert got[v.name].flops == fc.get_total_flops()
        assert got[v.name].flops_delta == got[v.name].flops - got["Baseline"].flops
    assert got["Baseline"].params_delta == 0 and got["+SE"].params_delta > 0
    assert got["+CGA"].flops_delta != 0  # fusion + adapters change the compute


def test_latency_is_a_median_in_eval_mode_and_restores_the_mode(tiny_unet) -> None:
    model = build_baseline(tiny_unet(), 0).train()
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(m.training))
    ms = measure_latency(model, torch.rand(1, 3, 32, 32), "cpu", warmup=2, repeats=3)
    assert ms > 0 and calls == [False] * 5 and model.training
    c = variant_costs(tiny_unet(), Variant("Baseline", ()), warmup=1, repeats=2)
    assert c.latency_ms > 0 and (c.warmup, c.repeats, c.device, c.batch_size) == (1, 2, "cpu", 1)


def test_cache_is_keyed_by_variant_and_config(tiny_unet, tmp_path: Path, monkeypatch) -> None:
    exp = tiny_unet(INSERTIONS)
    variants = plan_variants(exp.cfg)
    cache = tmp_path / "costs.json"
    first, errors = cached_costs(exp, variants, cache, latency=False)
    assert not errors and set(first) == {v.name for v in variants}
    stored = json.loads(cache.read_text())["entries"]
    assert sorted(k.split(":")[0] for k in stored) == sorted(v.slug for v in variants)

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(costs_mod, "variant_costs", boom)
    again, _ = cached_costs(exp, variants, cache, latency=False)
    assert {n: (c.params, c.flops, c.params_delta) for n, c in again.items()} == {
        n: (c.params, c.flops, c.params_delta) for n, c in first.items()
    }
    # another input size is another key: computed (here: the failure is reported, not raised)
    other, errors = cached_costs(exp, variants[:1], cache, image_size=(64, 64), latency=False)
    assert other == {} and "recomputed" in errors["Baseline"]


def test_maskrcnn_flops_in_eval_mode(write_experiment) -> None:
    from stitch.config import load_experiment

    exp = load_experiment(
        write_experiment("""\
        name: mrcnn
        task: instance
        baseline:
          model: maskrcnn
          args: {backbone: mobilenet_v3_small, num_classes: 3, min_size: 64, max_size: 64}
        probe: {image_size: [64, 64]}
    """)
    )
    c = variant_costs(exp, Variant("Baseline", ()), latency=False)
    assert c.flops and c.flops > 0 and c.in_channels == 3
    assert c.detections is not None and "detections" in c.note
    model = build_baseline(exp, 0).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model([torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))])
    assert c.flops == fc.get_total_flops()


def test_all_ops_flops_of_a_tiny_module_match_a_hand_count() -> None:
    from torch import nn

    from stitch.flops import count_flops as count

    model = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), nn.Sigmoid())  # eval: BN folded = 2 per element
    x = torch.rand(2, 4, 8, 8)  # 512 elements
    assert count(model, x) == 0  # PyTorch's count has no formula for any of these
    assert count(model, x, all_ops=True) == 512 + 2 * 512 + 512
    pools = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Softmax(1), nn.GroupNorm(2, 4))
    # window 2x2 per output (128 outputs), global mean 1 per input (128), softmax 3 x 8, group norm 4 x 8
    assert count(pools, x, all_ops=True) == 4 * 128 + 128 + 3 * 8 + 4 * 8
    conv = nn.Conv2d(4, 2, 1, bias=False)  # PyTorch's own formulas are kept: 2 x 64 x 4 x 2 x 2
    assert count(conv, x, all_ops=True) == count(conv, x) == 2 * 128 * 4 * 2
    up = nn.Upsample(scale_factor=2, mode="bilinear")
    assert count(up, x, all_ops=True) == 8 * 2 * 4 * 16 * 16


def test_all_ops_flops_of_a_coordatt_variant_exceed_the_baseline(tiny_unet) -> None:
    exp = tiny_unet('insertions:\n  - {name: CA, module: CoordAtt, at: "enc*"}\nablation: none\n')
    got = with_deltas(
        {v.name: variant_costs(exp, v, latency=False) for v in plan_variants(exp.cfg)}, "Baseline"
    )
    base, ca = got["Baseline"], got["+CA"]
    assert base.flops_all > base.flops and ca.flops_all > ca.flops
    assert ca.flops_all > base.flops_all and ca.flops_all_delta == ca.flops_all - base.flops_all
    # the gates (pooling, sigmoid, products) are counted only in the all-ops convention
    assert ca.flops_all_delta > ca.flops_delta


def test_an_old_cache_without_all_ops_flops_is_filled(tiny_unet, tmp_path: Path) -> None:
    exp = tiny_unet(INSERTIONS)
    variants = plan_variants(exp.cfg)
    cache = tmp_path / "costs.json"
    first, _ = cached_costs(exp, variants, cache, latency=False)
    store = json.loads(cache.read_text())
    for entry in store["entries"].values():  # as written before FLOPs (all ops) existed
        del entry["flops_all"], entry["flops_all_delta"]
        entry["params"] = -1  # proves the entry is read, not recomputed
    cache.write_text(json.dumps(store))
    again, errors = cached_costs(exp, variants, cache, latency=False)
    assert not errors and all(c.params == -1 for c in again.values())
    assert {n: c.flops_all for n, c in again.items()} == {n: c.flops_all for n, c in first.items()}
    assert all("flops_all" in e for e in json.loads(cache.read_text())["entries"].values())


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"version": 999}', '{"entries": 5}', ""])
def test_a_damaged_costs_cache_is_recomputed(tiny_unet, tmp_path: Path, text: str) -> None:
    """costs.json cut by a kill, replaced by hand or of another shape is recomputed, not a crash."""
    exp = tiny_unet(INSERTIONS)
    variants = plan_variants(exp.cfg)[:1]
    cache = tmp_path / "costs.json"
    cache.write_text(text)
    costs, errors = cached_costs(exp, variants, cache, latency=False)
    assert not errors and set(costs) == {variants[0].name}
    assert set(json.loads(cache.read_text())["entries"])

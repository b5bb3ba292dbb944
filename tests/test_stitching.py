"""The stitching modes on the U-Net: equivalences, parameter accounting, plain-module guarantees."""

from __future__ import annotations

import copy
import hashlib
import re

import pytest
import torch
from torch import nn

from stitch.baselines.unet import build_unet
from stitch.build import stitch_variant
from stitch.surgery import instance_seed
from stitch.validate import check_variant
from stitch.wrappers import After, Before, Residual

ARGS = {"in_channels": 3, "num_classes": 3, "base_width": 8}


def x() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x())


def test_no_insertions_is_exactly_the_plain_baseline(tiny_unet) -> None:
    built = stitch_variant(tiny_unet(), "baseline", seed=7)
    torch.manual_seed(7)
    plain = build_unet(**ARGS)
    assert torch.equal(outputs(built.model), outputs(plain))
    assert built.applied == [] and built.delta == 0


def test_residual_with_zero_scale_equals_the_baseline_at_init(tiny_unet) -> None:
    exp = tiny_unet("""
        insertions:
          - {name: CA, module: CoordAtt, at: "enc*", mode: residual, residual_scale: 0.0}
          - {name: SE, module: SE, at: [dec1, bottleneck], mode: residual, residual_scale: 0.0}
    """)
    stitched = stitch_variant(exp, seed=3)
    base = stitch_variant(exp, "baseline", seed=3)
    assert stitched.delta > 0
    assert torch.equal(outputs(stitched.model), outputs(base.model))
    assert isinstance(stitched.model.enc1, Residual)


def test_baseline_weights_are_paired_across_variants(tiny_unet) -> None:
    exp = tiny_unet("insertions:\n  - {name: CA, module: CoordAtt, at: enc1}\n")
    stitched = stitch_variant(exp, seed=5).model.state_dict()
    base = stitch_variant(exp, "baseline", seed=5).model.state_dict()
    for key, value in base.items():
        k = key.replace("enc1.", "enc1.base.", 1) if key.startswith("enc1.") else key
        assert torch.equal(stitched[k], value), key


def test_parameter_delta_is_the_sum_of_inserted_modules_and_adapters(tiny_unet) -> None:
    exp = tiny_unet("""
        insertions:
          - {name: CA, module: CoordAtt, at: "enc*"}
          - {name: CGA, module: CGAFusion, at: "skip*"}
          - {name: SA, module: SplitAttention, at: dec2.3, mode: replace}
          - {name: SE, module: SE, at: up1, mode: before}
          - {name: R, module: ECA, at: head, mode: residual, residual_scale: 1.0}
    """)
    built = stitch_variant(exp)
    added = sum(a.params + a.adapter_params for a in built.applied) + 1  # + the residual scale
    removed = sum(a.removed_params for a in built.applied)
    assert built.delta == added - removed == sum(a.delta for a in built.applied)
    cga = [a for a in built.applied if a.insertion == "CGA"]
    assert {a.adapter for a in cga} == {
        "1x1 conv 8->16",
        "1x1 conv 16->32",
        "1x1 conv 32->64",
        "1x1 conv 64->128",
    }
    assert all(a.adapter_params > 0 for a in cga)
    sa = next(a for a in built.applied if a.insertion == "SA")
    assert sa.removed_params == 16 * 16 * 9 and sa.adapter is None
    assert isinstance(built.model.up1, Before)


def test_one_insertion_at_several_points_makes_independent_instances(tiny_unet) -> None:
    exp = tiny_unet("insertions:\n  - {name: SE, module: SE, at: [enc3, dec3]}\n")
    model = stitch_variant(exp).model
    a, b = model.enc3.added, model.dec3.added
    assert a is not b
    assert {id(p) for p in a.parameters()}.isdisjoint(id(p) for p in b.parameters())


def test_insertions_at_one_point_stack_in_declaration_order_and_children_first(tiny_unet) -> None:
    exp = tiny_unet("""
        insertions:
          - {name: A, module: SE, at: enc2}
          - {name: B, module: ECA, at: enc2}
          - {name: C, module: CBAM, at: enc2.1.0}
    """)
    model = stitch_variant(exp).model
    assert isinstance(model.enc2, After) and isinstance(model.enc2.base, After)
    assert type(model.enc2.added).__name__ == "EcaModule"
    assert type(model.enc2.base.added).__name__ == "SEModule"
    assert isinstance(model.enc2.base.base[1][0], After)  # the child was stitched first, inside


def test_nest_puts_a_module_inside_a_zoo_module_then_into_the_network(tiny_unet) -> None:
    exp = tiny_unet("""
        insertions:
          - name: CGA
            module: CGAFusion
            at: skip2
            nest:
              - {module: SE, at: conv, mode: after}
    """)
    built = stitch_variant(exp)
    (applied,) = built.applied
    (inner,) = applied.nested
    assert (inner.module, inner.point, inner.insertion) == ("SE", "conv", "CGA/SE")
    fusion = built.model.skip2.module  # adapted: CGAFusion + 1x1 conv
    assert isinstance(fusion.conv, After)
    assert applied.params == sum(p.numel() for p in fusion.parameters())
    assert built.delta == applied.delta
    check_variant(exp, built.variant, 0)


def test_stitched_model_is_a_plain_module(tiny_unet) -> None:
    exp = tiny_unet("""
        insertions:
          - {name: CA, module: CoordAtt, at: "enc*"}
          - {name: CGA, module: CGAFusion, at: "skip*"}
          - {name: SE, module: SE, at: dec1, mode: residual, residual_scale: 0.0}
    """)
    model = stitch_variant(exp, seed=0).model.eval()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    reference = outputs(model)
    # state_dict round-trips into the same variant built under another seed
    other = stitch_variant(exp, seed=1).model.eval()
    assert not torch.equal(outputs(other), reference)
    other.load_state_dict(model.state_dict())
    assert torch.equal(outputs(other), reference)
    assert torch.equal(outputs(copy.deepcopy(model)), reference)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(outputs(traced), reference)


def test_torch_compile_keeps_working(tiny_unet) -> None:
    exp = tiny_unet(
        'insertions:\n  - {name: CA, module: CoordAtt, at: "enc*"}\n'
        "  - {name: CGA, module: CGAFusion, at: skip1}\n"
    )
    model = stitch_variant(exp).model.eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(outputs(compiled), outputs(model))


def test_probe_channels_reach_module_constructors(tiny_unet) -> None:
    exp = tiny_unet(
        "insertions:\n  - {name: SA, module: SplitAttention, at: enc3.1.0, mode: replace}\n"
        "  - {name: SA2, module: SplitAttention, at: enc4.1.3, mode: replace, args: {radix: 4}}\n"
    )
    model = stitch_variant(exp).model
    assert model.enc3[1][0].conv.in_channels == 16 and model.enc3[1][0].conv.out_channels == 2 * 32
    assert model.enc4[1][3].conv.in_channels == 64 and model.enc4[1][3].radix == 4


def test_replacing_a_strided_conv_passes_the_stride(write_experiment) -> None:
    from stitch.config import load_experiment

    exp = load_experiment(
        write_experiment("""
        name: mr
        task: instance
        baseline:
          model: maskrcnn
          args: {backbone: resnet50, min_size: 128, max_size: 128, num_classes: 3}
        probe: {image_size: [128, 128]}
        insertions:
          - {name: SA, module: SplitAttention, at: c5.0.conv2, mode: replace}
          - {name: CA, module: CoordAtt, at: "c4.*.conv2"}
    """)
    )
    built = stitch_variant(exp)
    sa = built.model.backbone.body.layer4[0].conv2
    assert sa.conv.stride == (2, 2)
    assert len([a for a in built.applied if a.insertion == "CA"]) == 6
    check_variant(exp, built.variant, 0)


def test_replace_comes_first_and_other_insertions_wrap_the_replacement(tiny_unet) -> None:
    exp = tiny_unet("""
        insertions:
          - {name: A, module: SE, at: head}
          - {name: B, module: ECA, at: head, mode: replace}
    """)
    built = stitch_variant(exp)
    head = built.model.head
    assert isinstance(head, After) and type(head.added).__name__ == "SEModule"
    assert type(head.base.module).__name__ == "EcaModule"  # ECA (+ its 1x1 adapter) replaced the conv
    assert [a.insertion for a in built.applied] == ["B", "A"]


def test_inserted_modules_are_paired_across_variants(tiny_unet) -> None:
    exp = tiny_unet("""
        ablation: full-factorial
        insertions:
          - {name: CA, module: CoordAtt, at: enc2}
          - {name: SE, module: SE, at: enc1.0}
    """)
    alone = stitch_variant(exp, "+CA", seed=4).model.enc2.added.state_dict()
    both = stitch_variant(exp, "+CA +SE", seed=4).model.enc2.added.state_dict()
    other_seed = stitch_variant(exp, "+CA", seed=5).model.enc2.added.state_dict()
    assert all(torch.equal(alone[k], both[k]) for k in alone)
    assert not torch.equal(alone["conv1.weight"], other_seed["conv1.weight"])


@pytest.mark.parametrize(
    "seed, label, point", [(0, "CA", "enc2"), (4, "CA/SE", "enc2.0"), (123456, "PAFPN", "backbone.fpn")]
)
def test_instance_seed_is_the_first_four_sha256_bytes(seed: int, label: str, point: str) -> None:
    """Module init seeds (and so every stitched module's weights) stay what they always were."""
    expected = int.from_bytes(hashlib.sha256(f"{seed}|{label}|{point}".encode()).digest()[:4], "little")
    assert instance_seed(seed, label, point) == expected


@pytest.mark.parametrize(
    "insertion, cause",
    [
        (
            "{name: SE, module: SE, at: box_head}",
            "SE needs a 4-D feature map (N, C, H, W) but this point outputs",
        ),
        ("{name: SE, module: SE, at: fpn}", "SE needs a 4-D feature map"),
        ("{name: SE, module: SE, at: backbone.body.layer1.0.relu}", "this module runs 3 times per forward"),
        (
            "{name: SE, module: SE, at: box_predictor, mode: before}",
            "SE needs a 4-D feature map (N, C, H, W) but this point takes",
        ),
    ],
)
def test_points_that_a_unary_module_cannot_take(write_experiment, insertion: str, cause: str) -> None:
    from stitch.config import load_experiment
    from stitch.errors import ConfigError

    exp = load_experiment(
        write_experiment(f"""
        name: mr
        task: instance
        baseline:
          model: maskrcnn
          args: {{backbone: resnet50, min_size: 128, max_size: 128, num_classes: 3}}
        probe: {{image_size: [128, 128]}}
        insertions:
          - {insertion}
    """)
    )
    with pytest.raises(ConfigError, match=re.escape(cause)):
        stitch_variant(exp)


def test_example_maskrcnn_combination_keeps_every_insertion() -> None:
    from pathlib import Path

    from stitch.config import load_experiment

    exp = load_experiment(
        Path(__file__).resolve().parents[1] / "experiments" / "maskrcnn_backbone_attention.yaml"
    )
    model = stitch_variant(exp, "+CA +SA").model
    kinds = [type(m).__name__ for m in model.backbone.body.modules()]
    assert kinds.count("CoordAttn") == 6 + 3  # after c4's six conv2s and after c5's three replacements
    assert kinds.count("SplitAttention") == 3

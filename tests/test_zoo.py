"""Tests of the module zoo: registry contract, generic module behaviour, fidelity to official code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import modules_zoo
from modules_zoo import registry
from modules_zoo.cgafusion import CGAFusion

try:  # tests/ may or may not become a package
    from . import reference_impls as ref
except ImportError:
    import reference_impls as ref

ROOT = Path(__file__).resolve().parents[1]
PROBE = {"channels": 32, "in_channels": 32, "out_channels": 32, "stride": 1, "feat_size": (16, 16)}
#: user args the generic tests give a module that cannot take SHAPE with its defaults
GENERIC_ARGS: dict[str, dict] = {"BAT": {"block_size": 8}}  # default block_size 7 does not divide 16
SHAPE = (2, 32, 16, 16)
EXPECTED = {
    "CoordAtt": "unary",
    "CGAFusion": "fusion",
    "SplitAttention": "unary",
    "SE": "unary",
    "EffectiveSE": "unary",
    "ECA": "unary",
    "CECA": "unary",
    "CBAM": "unary",
    "LightCBAM": "unary",
    "GC": "unary",
    "GCA": "unary",
    "ELA": "unary",
    "Strip": "unary",
    "GE": "unary",
    "NonLocal": "unary",
    "BAT": "unary",
    "SK": "unary",
    "Halo": "unary",
    "Lambda": "unary",
    "BoT": "unary",
}
MODULE_NAMES = [e.name for e in modules_zoo.entries() if e.kind in ("unary", "fusion")]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _perturb(m: nn.Module, scale: float = 0.1) -> nn.Module:
    """Move every parameter and BN statistic away from its init (so zero-inits / BN eval matter)."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.normal_(0.0, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def _run(
    entry: registry.ZooEntry, m: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None
) -> torch.Tensor:
    return m(x, y) if entry.kind == "fusion" else m(x)


def _inputs(shape: tuple[int, ...] = SHAPE, requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(shape, requires_grad=requires_grad), torch.randn(shape, requires_grad=requires_grad))


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------
def test_expected_entries_registered() -> None:
    got = {e.name: e.kind for e in modules_zoo.entries()}
    for name, kind in EXPECTED.items():
        assert got.get(name) == kind, name


def test_names_unique_and_sorted() -> None:
    names = modules_zoo.names()
    assert len(names) == len(set(names))
    assert names == sorted(names)
    assert [e.name for e in modules_zoo.entries()] == names


def test_unknown_name_raises_keyerror() -> None:
    with pytest.raises(KeyError):
        modules_zoo.get("NoSuchModule")


def test_double_registration_rejected() -> None:
    with pytest.raises(ValueError):
        registry.register("SE", "unary", "ref", "summary")(lambda channels: nn.Identity())


def test_package_exports() -> None:
    assert modules_zoo.registry is registry
    assert modules_zoo.get("SE") is registry.get("SE")


@pytest.mark.parametrize("name", modules_zoo.names())
def test_entry_metadata_and_signature(name: str) -> None:
    e = modules_zoo.get(name)
    assert e.reference.strip() and e.summary.strip()
    assert e.modes and set(e.modes) <= set(registry.DEFAULT_MODES[e.kind])
    params = e.parameters()
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()), "no *args/**kwargs"
    for p in params.values():
        assert p.annotation is not inspect.Parameter.empty, f"{name}.{p.name} lacks an annotation"
    assert set(e.probe_arguments()) & {"channels", "in_channels"}
    for arg in e.arguments():  # what `stitch zoo` lists
        assert not arg.required, f"{name}.{arg.name} needs a default"
        assert arg.annotation
    # fidelity: every zoo entry says how closely it follows the official code, and names real tests
    assert e.fidelity in registry.FIDELITY_LEVELS and e.fidelity, f"{name} sets no fidelity"
    if e.fidelity == "variant":
        assert e.fidelity_note.strip(), f"{name}: a variant's note says of what and how it differs"
    if e.fidelity.startswith("official"):
        assert e.tested_by, f"{name}: an {e.fidelity} claim names the tests that back it (tested_by)"
    for test_id in e.tested_by:
        file, test = test_id.split("::")
        path = ROOT / file
        assert path.is_file() and re.search(rf"^def {test}\(", path.read_text(encoding="utf-8"), re.M), (
            f"{name}: tested_by names {test_id}, which does not exist"
        )


def test_register_rejects_unknown_fidelity_and_malformed_test_ids() -> None:
    for kwargs, message in [
        ({"fidelity": "exact"}, "fidelity 'exact' is not one of 'official-output', "),
        ({"tested_by": ("test_zoo.py::test_x",)}, "tested_by 'test_zoo.py::test_x' is not a test id"),
    ]:
        with pytest.raises(registry.RegistrationError, match=re.escape(message)):
            registry.register("NoSuchModuleYet", "unary", **kwargs)(lambda channels: nn.Identity())
    assert "NoSuchModuleYet" not in modules_zoo.names()


# ------------------------------------------------------------------------------------------------
# generic behaviour of every unary / fusion module
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODULE_NAMES)
def test_keeps_shape(name: str) -> None:
    e = modules_zoo.get(name)
    m = e.build(PROBE, GENERIC_ARGS.get(name, {}))
    x, y = _inputs()
    out = _run(e, m, x, y)
    assert out.shape == SHAPE
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    e = modules_zoo.get(name)
    m = e.build(PROBE, GENERIC_ARGS.get(name, {})).train()
    x, y = _inputs(requires_grad=True)
    _run(e, m, x, y).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing, missing
    assert x.grad is not None
    if e.kind == "fusion":
        assert y.grad is not None


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_state_dict_round_trip(name: str) -> None:
    e = modules_zoo.get(name)
    m1 = _perturb(e.build(PROBE, GENERIC_ARGS.get(name, {})))
    x, y = _inputs()
    m1.train()
    _run(e, m1, x, y)  # update BN running stats too
    m2 = e.build(PROBE, GENERIC_ARGS.get(name, {}))
    m2.load_state_dict(m1.state_dict(), strict=True)
    m1.eval(), m2.eval()
    with torch.no_grad():
        torch.testing.assert_close(_run(e, m2, x, y), _run(e, m1, x, y), rtol=0, atol=0)


def test_user_args_win_over_probe() -> None:
    sa = modules_zoo.get("SplitAttention").build(PROBE, {"out_channels": 64, "stride": 2, "radix": 4})
    assert sa(torch.randn(SHAPE)).shape == (2, 64, 8, 8)
    eca = modules_zoo.get("ECA").build(PROBE, {"kernel_size": 5})
    assert eca.conv.kernel_size == (5,)
    ca = modules_zoo.get("CoordAtt").build(PROBE, {"reduction": 2})
    assert ca.conv1.out_channels == 16


# ------------------------------------------------------------------------------------------------
# fidelity: SplitAttention vs the installed official resnest SplAtConv2d
# ------------------------------------------------------------------------------------------------
def _to_official_key(key: str) -> str:
    """Our (timm SplitAttn) state-dict key -> SplAtConv2d key. timm kept the official names
    (conv, bn0, fc1, bn1, fc2); only parameter-free modules (act0, drop, act1, rsoftmax) differ."""
    return key


SPLAT_CONFIGS = [
    # in, out, stride, radix, cardinality, reduction_factor, norm
    (32, 32, 1, 2, 1, 4, True),
    (32, 32, 1, 1, 1, 4, True),
    (64, 64, 1, 4, 1, 4, True),
    (64, 128, 2, 2, 2, 4, True),
    (32, 48, 2, 1, 2, 4, True),
    (70, 64, 2, 2, 1, 4, True),  # inter = 35, not a multiple of radix: rebuilt fc1/bn1/fc2
    (52, 52, 1, 4, 1, 3, True),  # inter = 69, not a multiple of radix 4
    (32, 32, 1, 2, 1, 4, False),
    (64, 32, 2, 4, 2, 4, False),
]


@pytest.mark.parametrize("cin,cout,stride,radix,card,rf,norm", SPLAT_CONFIGS)
def test_split_attention_matches_official(
    cin: int, cout: int, stride: int, radix: int, card: int, rf: int, norm: bool
) -> None:
    ours = modules_zoo.get("SplitAttention").build(
        {"channels": cin, "in_channels": cin, "out_channels": cout, "stride": stride},
        {"radix": radix, "cardinality": card, "reduction_factor": rf, "norm": norm},
    )
    # official ResNeSt package (pip ``resnest``; not a project dependency, so skip if absent)
    SplAtConv2d = pytest.importorskip("resnest.torch.splat").SplAtConv2d
    official = SplAtConv2d(
        cin,
        cout,
        kernel_size=3,
        stride=stride,
        padding=1,
        groups=card,
        bias=not norm,
        radix=radix,
        reduction_factor=rf,
        norm_layer=nn.BatchNorm2d if norm else None,
    )
    n_ours = sum(p.numel() for p in ours.parameters())
    n_off = sum(p.numel() for p in official.parameters())
    assert n_ours == n_off
    assert ours.fc1.out_channels == official.fc1.out_channels == max(cin * radix // rf, 32)

    _perturb(ours)
    sd = {_to_official_key(k): v for k, v in ours.state_dict().items()}
    official.load_state_dict(sd, strict=True)
    ours.double().eval(), official.double().eval()
    x = torch.randn(2, cin, 12, 10, dtype=torch.float64)
    with torch.no_grad():
        out = ours(x)
        assert out.shape == (2, cout, 12 // stride, 10 // stride)
        torch.testing.assert_close(out, official(x), rtol=1e-10, atol=1e-10)
    ours.train(), official.train()  # batch-statistics path too
    with torch.no_grad():
        torch.testing.assert_close(ours(x), official(x), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# fidelity: CoordAtt vs a functional transcription of the official coordatt.py
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [16, 64, 320, 1024])
def test_coordatt_matches_official(channels: int) -> None:
    m = modules_zoo.get("CoordAtt").build({"channels": channels}, {})
    assert sum(p.numel() for p in m.parameters()) == ref.coordatt_official_param_count(channels, channels)
    assert set(m.state_dict()) == ref.COORDATT_OFFICIAL_KEYS
    assert m.conv1.out_channels == max(8, channels // 32)
    _perturb(m).double().eval()
    x = torch.randn(2, channels, 12, 10, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref.coordatt_official_forward(m, x), rtol=1e-10, atol=1e-10)


def test_coordatt_reduction_arg() -> None:
    m = modules_zoo.get("CoordAtt").build({"channels": 320}, {"reduction": 16})
    assert sum(p.numel() for p in m.parameters()) == ref.coordatt_official_param_count(320, 320, 16)


# ------------------------------------------------------------------------------------------------
# fidelity: CGAFusion vs a functional transcription of DEA-Net's cga.py / fusion.py
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim,reduction", [(32, 8), (64, 4), (16, 8)])
@pytest.mark.parametrize("paper_sigmoid", [False, True])
def test_cgafusion_matches_official(dim: int, reduction: int, paper_sigmoid: bool) -> None:
    m = modules_zoo.get("CGAFusion").build(
        {"channels": dim}, {"reduction": reduction, "paper_sigmoid": paper_sigmoid}
    )
    assert isinstance(m, CGAFusion)
    assert sum(p.numel() for p in m.parameters()) == ref.cgafusion_official_param_count(dim, reduction)
    assert set(m.state_dict()) == ref.CGAFUSION_OFFICIAL_KEYS
    _perturb(m, scale=0.5).double().eval()
    x = torch.randn(2, dim, 12, 10, dtype=torch.float64)
    y = torch.randn(2, dim, 12, 10, dtype=torch.float64)
    with torch.no_grad():
        out = m(x, y)
        expected = ref.cgafusion_official_forward(m, x, y, sigmoids=1 if paper_sigmoid else 2)
        other = ref.cgafusion_official_forward(m, x, y, sigmoids=2 if paper_sigmoid else 1)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out, other)  # the flag really switches the sigmoid count
    assert not torch.allclose(m(y, x), out)  # argument order matters: (skip, up)


def test_cgafusion_fx_traceable() -> None:
    m = _perturb(modules_zoo.get("CGAFusion").build({"channels": 32}, {})).eval()
    gm = torch.fx.symbolic_trace(m)
    x, y = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(gm(x, y), m(x, y), rtol=0, atol=0)

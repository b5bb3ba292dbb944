"""``train.compile``: stitched models compile without graph breaks, in place, and compute what the
eager model computes; Mask R-CNN compiles its backbone only; a missing compiler is one line.

Backend: ``aot_eager`` (traces the same Dynamo and AOTAutograd graphs as ``inductor`` and runs them
without code generation). One inductor compile of a width-4 U-Net forward and backward took 170 s
on the shared 2-core CPU, far over a unit test's budget.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

from stitch.baselines.maskrcnn import MASKRCNN
from stitch.build import stitch_variant
from stitch.compile_model import compile_for_training, compile_problem, compile_target
from stitch.errors import StitchError

#: Every stitching mode in one U-Net, with the zoo modules of the shipped experiments (CoordAtt,
#: CGAFusion with its 1x1 adapters, SplitAttention) and timm attention layers (SE, ECA, CBAM).
#: enc3 stacks three: SplitAttention replacing a conv inside it, CoordAtt after it, CBAM's
#: residual around that.
EVERY_MODE = """\
insertions:
  - {name: CA, module: CoordAtt, at: "enc*", mode: after}
  - {name: SE, module: SE, at: [up1, dec2], mode: before}
  - {name: ECA, module: ECA, at: [enc2, head], mode: residual, residual_scale: 0.5}
  - {name: CBAM, module: CBAM, at: enc3, mode: residual}
  - {name: SA, module: SplitAttention, at: enc3.1.0, mode: replace}
  - {name: CGA, module: CGAFusion, at: "skip*", mode: replace, nest: [{module: SE, at: conv, mode: after}]}
"""


def image(seed: int = 1) -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def graph_breaks() -> dict[str, int]:
    """The graph breaks Dynamo counted since the last :func:`fresh_dynamo`, by reason."""
    return dict(counters["graph_break"])


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    torch._dynamo.reset()
    counters.clear()


def test_the_graph_break_count_sees_a_break() -> None:
    """The counter the tests below read is live: a module that reads a value to Python breaks."""

    class Breaks(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * float(x.sum())

    module = Breaks()
    module.compile(backend="eager")
    module(torch.ones(2))
    assert sum(graph_breaks().values()) == 1


def test_compiled_stitched_model_computes_the_eager_outputs_and_gradients_in_place(tiny_unet) -> None:
    model = stitch_variant(tiny_unet(EVERY_MODE)).model.train()
    eager = copy.deepcopy(model)
    params, keys = list(model.parameters()), list(model.state_dict())
    assert compile_for_training(model, backend="aot_eager") is model
    # in place: same object, parameters and state-dict keys (checkpoints, optimiser unchanged)
    assert list(model.parameters()) == params and list(model.state_dict()) == keys
    outputs = [m(image()) for m in (eager, model)]
    for out in outputs:
        out.square().mean().backward()
    # float32 default tolerances of assert_close (rtol 1.3e-6, atol 1e-5)
    torch.testing.assert_close(outputs[1], outputs[0])
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    torch.testing.assert_close(model.state_dict(), eager.state_dict())  # BN running statistics
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(image(3)), eager.eval()(image(3)))
    assert graph_breaks() == {} and counters["stats"]["unique_graphs"] == 2  # training, evaluation
    model.load_state_dict(eager.state_dict())  # a checkpoint of an eager run loads as it is


def test_maskrcnn_compiles_its_backbone_only_without_graph_breaks_and_gives_the_eager_losses(
    write_experiment,
) -> None:
    from stitch.config import load_experiment

    exp = load_experiment(
        write_experiment("""
        name: mrcnn
        task: instance
        baseline:
          model: maskrcnn
          args: {backbone: resnet18, min_size: 64, max_size: 64, num_classes: 3}
        probe: {image_size: [64, 64]}
        insertions:
          - {name: CA, module: CoordAtt, at: "backbone.body.layer[34].*.conv2", mode: after}
          - {name: SA, module: SplitAttention, args: {radix: 2}, at: "c5.*.conv2", mode: replace}
    """)
    )
    torch.manual_seed(0)
    model = stitch_variant(exp).model.train()
    assert compile_target(model) == "backbone"
    eager = copy.deepcopy(model)
    compile_for_training(model, backend="aot_eager")
    batch = MASKRCNN.example_batch({"num_classes": 3}, 2, (64, 64))
    losses = []
    for m in (eager, model):
        torch.manual_seed(0)  # the RPN and RoI samplers draw
        losses.append(m(batch["images"], batch["targets"]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1  # the backbone's training forward
    assert graph_breaks() == {}  # the heads run eagerly: Dynamo never sees their ~40 breaks


def test_whole_models_are_compiled_when_not_detection_models() -> None:
    assert compile_target(nn.Sequential(nn.Conv2d(1, 1, 1))) == ""


@pytest.mark.parametrize(
    ("device", "missing", "expected"),
    [
        ("cpu", "which", "train.compile on CPU needs a C++ compiler and 'g++' is not on PATH"),
        ("cuda", "find_spec", "train.compile on CUDA needs Triton, which is not installed"),
    ],
)
def test_a_missing_compiler_is_one_line_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch, device: str, missing: str, expected: str
) -> None:
    import importlib.util
    import shutil

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil if missing == "which" else importlib.util, missing, lambda *a, **k: None)
    problem = compile_problem(torch.device(device))
    assert problem is not None and problem.startswith(expected) and "\n" not in problem
    assert problem.endswith("set train.compile: false")
    assert compile_problem(torch.device(device), backend="aot_eager") is None
    if device == "cpu":
        with pytest.raises(StitchError, match="needs a C.. compiler"):
            compile_for_training(nn.Linear(2, 2))


def test_the_cxx_variable_names_the_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    assert "'no-such-compiler-xyz' is not on PATH" in (compile_problem(torch.device("cpu")) or "")


def test_stitch_run_and_sweep_refuse_a_missing_compiler_before_writing(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from yaml_snippets import tiny_shapes_unet

    from stitch.cli import main

    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    exp = tmp_path / "c.yaml"
    sweep = "sweep:\n  trials: 2\n  slots:\n    - {name: ENC, at: [enc1, enc2], modules: [SE]}\n"
    exp.write_text(tiny_shapes_unet("c", tmp_path / "data") + "  compile: true\n" + sweep)
    for command in ("run", "sweep"):
        code = main([command, str(exp), "--out", str(tmp_path / "runs"), "--device", "cpu", "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: train.compile on CPU needs a C++ compiler"), err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()

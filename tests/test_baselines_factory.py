"""Your own baseline: ``stitch.register_baseline`` and ``model: "pkg.mod:factory"`` / ``"file.py:factory"``
are stitched, validated and trained; the factory's signature is the baseline's argument list; a model
with the wrong output is one line and exit 2; a segmentation model may return ``{"out": logits}``."""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import stitch
from stitch.baselines.factory import add_baseline_ref, spec_from_factory
from stitch.build import check_kwargs, stitch_variant
from stitch.cli import main
from stitch.errors import StitchError
from stitch.registry import BASELINES
from stitch.runs import fit_baseline_to_data
from stitch.store import ResultStore
from stitch.tasks.segmentation import SegmentationTask, segmentation_logits
from stitch.wrappers import After

NETS = '''\
"""Toy segmenters for the factory tests."""
import torch
from torch import nn


def make_net(in_channels: int = 3, num_classes: int = 2, width: int = 8) -> nn.Module:
    """Two 3x3 conv blocks and a 1x1 classifier."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
        nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
        nn.Conv2d(width, num_classes, 1),
    )


def strided(num_classes: int = 2) -> nn.Module:
    return nn.Conv2d(3, num_classes, 3, stride=2)


def not_a_model(num_classes: int = 2):
    return {"weights": 1}
'''


def tiny_net(in_channels: int = 3, num_classes: int = 2, width: int = 8) -> nn.Module:
    """The same toy segmenter, defined in the test."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
        nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
        nn.Conv2d(width, num_classes, 1),
    )


class DictOut(nn.Module):
    """A torchvision-style segmenter: ``{"out": logits, "aux": …}``."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2) -> None:
        super().__init__()
        self.body = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.classifier = nn.Conv2d(4, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.classifier(torch.relu(self.body(x)))
        return {"out": out, "aux": out.detach() * 0}


def experiment(tmp_path: Path, model: str, extra: str = "", name: str = "own") -> Path:
    """A one-epoch experiment on 8 generated 32x32 shapes images, with SE after the first block."""
    text = textwrap.dedent(f"""\
        name: {name}
        task: segmentation
        baseline:
          model: "{model}"
          args: {{width: 4}}
        data:
          dataset: shapes
          root: {tmp_path / "data"}
          num_images: 8
          image_size: [32, 32]
          num_classes: 3
        train:
          epochs: 1
          batch_size: 4
          deterministic: true
        insertions:
          - {{name: SE, module: SE, at: block1}}
        seeds: [0]
    """) + textwrap.dedent(extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def registered() -> Iterator[str]:
    """``tiny_net`` registered as the baseline ``test_tiny_net`` (removed afterwards)."""
    name = "test_tiny_net"
    stitch.register_baseline(name, aliases={"block1": "0", "block2": "1", "head": "2"}, summary="toy")(
        tiny_net
    )
    yield name
    BASELINES.remove(name)


def trained_rows(run_dir: Path) -> list[tuple[str, str, int]]:
    with ResultStore(run_dir / "runs.sqlite") as store:
        return [(r.variant, r.status, r.epochs_done) for r in store.rows()]


@pytest.mark.usefixtures("no_report")  # the runs are checked, not their reports
def test_registered_baseline_is_stitched_and_trained(registered: str, tmp_path: Path, capsys) -> None:
    spec = BASELINES[registered]
    assert spec.task == "segmentation" and spec.summary == "toy"
    assert inspect.signature(spec.build) == inspect.signature(tiny_net)
    path = experiment(tmp_path, registered)
    assert main(["validate", str(path)]) == 0
    assert "+SE" in capsys.readouterr().out
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    assert trained_rows(tmp_path / "runs" / "own") == [("Baseline", "done", 1), ("+SE", "done", 1)]


@pytest.mark.usefixtures("no_report")  # the runs are checked, not their reports
def test_module_reference_from_sys_path_is_stitched_and_trained(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "lib" / "stitch_test_nets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    ref = "stitch_test_nets.nets:make_net"
    path = experiment(tmp_path, ref, name="by_ref", extra="")
    path.write_text(path.read_text().replace("at: block1", "at: '0'"))
    try:
        assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
        assert trained_rows(tmp_path / "runs" / "by_ref") == [("Baseline", "done", 1), ("+SE", "done", 1)]
        assert BASELINES[ref].task == "segmentation"
    finally:
        BASELINES.remove(ref)


def test_file_reference_is_relative_to_the_experiment_and_stitched(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "nets.py").write_text(NETS)
    ref = "models/nets.py:make_net"
    path = experiment(tmp_path, ref, name="by_file")
    path.write_text(path.read_text().replace("at: block1", "at: '1'"))
    try:
        exp = stitch.load_experiment(path)
        built = stitch_variant(exp, "+SE")
        assert isinstance(built.model[1], After) and built.delta > 0
        assert built.model(torch.rand(2, 3, 32, 32)).shape == (2, 2, 32, 32)
        # the data fills num_classes / in_channels because the factory takes them
        fitted = fit_baseline_to_data(exp, 3, 1)
        assert fitted.cfg.baseline.args == {"width": 4, "num_classes": 3, "in_channels": 1}
    finally:
        BASELINES.remove(ref)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            "strided",
            "baseline 'nets.py:strided' must map N x C x H x W images to N x K x H x W logits (a tensor, or a "
            "dict with them under 'out'); for a 2 x 3 x 32 x 32 batch it returned a tensor of shape [2, 2, 15, 15]",
        ),
        ("not_a_model", "the factory of baseline 'nets.py:not_a_model' returned a dict, not an nn.Module"),
    ],
)
def test_a_factory_with_the_wrong_output_is_one_line_and_exit_2(
    tmp_path: Path, capsys, factory, message
) -> None:
    (tmp_path / "nets.py").write_text(NETS)
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"name: bad\ntask: segmentation\nbaseline: {{model: 'nets.py:{factory}'}}\nprobe: {{image_size: [32, 32]}}\n"
    )
    try:
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    finally:
        BASELINES.remove(f"nets.py:{factory}")


def test_signature_checks_and_name_collisions(registered: str) -> None:
    spec = BASELINES[registered]
    assert check_kwargs(spec.build, {"widht": 3}) == "unknown argument 'widht' — did you mean 'width'?"
    with pytest.raises(StitchError, match="baseline 'unet' is already registered"):
        stitch.register_baseline("unet")(tiny_net)
    with pytest.raises(StitchError, match="alias 'x' -> 'nope' names no module of the model"):
        spec_from_factory("t", tiny_net, aliases={"x": "nope"}).aliases(tiny_net())
    with pytest.raises(StitchError, match="needs a function"):
        spec_from_factory("t", tiny_net())
    with pytest.raises(StitchError, match="task 'detection' has no factory support"):
        spec_from_factory("t", tiny_net, "detection")


def test_reference_to_a_registered_factory_keeps_its_options_and_replaces(registered: str) -> None:
    add_baseline_ref("pkg.mod:tiny_net", tiny_net, "instance")
    try:
        spec = BASELINES["pkg.mod:tiny_net"]
        assert spec.task == "segmentation" and spec.summary == "toy"  # declared at registration
        assert spec.aliases(tiny_net())["block1"] == "0"
        add_baseline_ref("pkg.mod:tiny_net", DictOut, "segmentation")  # replaced, no error
        assert BASELINES["pkg.mod:tiny_net"].build().__class__ is DictOut
    finally:
        BASELINES.remove("pkg.mod:tiny_net")


def test_example_batch_uses_the_factory_channels_and_a_class_factory() -> None:
    spec = spec_from_factory("dict_out", DictOut, image_size=24)
    batch = spec.example_batch({"in_channels": 2}, 2, None)
    assert batch["image"].shape == (2, 2, 24, 24) and int(batch["mask"].max()) < 2
    assert spec.example_batch({}, 3, (16, 8))["image"].shape == (3, 3, 16, 8)
    model = spec.build(in_channels=2, num_classes=2)
    assert set(spec.run(model, batch)) == {"out", "aux"}  # dict outputs pass the check
    assert torch.isfinite(spec.loss(model, batch))
    no_channels = spec_from_factory("gray", lambda num_classes=2: nn.Conv2d(1, num_classes, 1), in_channels=1)
    assert no_channels.example_batch({}, 2, (8, 8))["image"].shape == (2, 1, 8, 8)


def test_the_class_count_is_checked_only_when_known() -> None:
    def fixed(num_classes: int | None = None) -> nn.Module:  # torchvision style: None means its own count
        return nn.Conv2d(3, 5, 1)

    spec = spec_from_factory("fixed", fixed)
    assert spec.run(fixed(), spec.example_batch({}, 2, (8, 8))).shape == (2, 5, 8, 8)
    with pytest.raises(
        ValueError, match=r"to N x 4 x H x W logits \(num_classes=4\); .* shape \[2, 5, 8, 8\]"
    ):
        spec.run(fixed(), spec.example_batch({"num_classes": 4}, 2, (8, 8)))


def test_segmentation_task_accepts_a_dict_with_out() -> None:
    torch.manual_seed(0)
    model = DictOut(3, 3)
    batch = {"image": torch.rand(2, 3, 16, 16), "mask": torch.randint(0, 3, (2, 16, 16))}
    task = SegmentationTask(num_classes=3, loss_name="ce+dice")
    loss, parts = task.loss(model, batch)
    assert torch.isfinite(loss) and set(parts) == {"ce", "dice"}
    metrics = task.evaluate(model, [batch], torch.device("cpu"))
    assert 0 <= metrics["miou"] <= 1
    with pytest.raises(
        TypeError, match=r"returned a dict with keys \['aux'\]; it needs the logits under 'out'"
    ):
        segmentation_logits({"aux": torch.zeros(1)})


def test_instance_factory_uses_the_detection_interface() -> None:
    from stitch.baselines.maskrcnn import build_maskrcnn

    def small_maskrcnn(num_classes: int = 3) -> nn.Module:
        return build_maskrcnn(
            "mobilenet_v3_small",
            num_classes=num_classes,
            min_size=64,
            max_size=64,
            rpn_pre_nms_top_n_train=50,
            rpn_post_nms_top_n_train=20,
            box_batch_size_per_image=16,
        )

    spec = spec_from_factory("small_maskrcnn", small_maskrcnn, "instance", image_size=64)
    batch = spec.example_batch({}, 2, None)
    assert len(batch["images"]) == 2 and int(max(t["labels"].max() for t in batch["targets"])) < 3
    torch.manual_seed(0)
    losses = spec.run(small_maskrcnn(), batch)
    assert {"loss_classifier", "loss_mask"} <= set(losses)


def test_segmentation_models_pytorch_unet_by_reference(tmp_path: Path) -> None:
    pytest.importorskip("segmentation_models_pytorch")
    ref = "segmentation_models_pytorch:Unet"
    path = tmp_path / "smp.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: smp
        task: segmentation
        baseline:
          model: "{ref}"
          args: {{encoder_name: resnet18, encoder_weights: null, encoder_depth: 3, decoder_channels: [32, 16, 8],
                  classes: 3}}
        probe: {{image_size: [32, 32]}}
        insertions:
          - {{name: CA, module: CoordAtt, at: encoder.layer1}}
          - {{name: SE, module: SE, at: "decoder.blocks.*"}}
    """)
    )
    try:
        exp = stitch.load_experiment(path)
        built = stitch_variant(exp)
        assert isinstance(built.model.get_submodule("encoder.layer1"), After) and built.delta > 0
        assert built.model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
        assert main(["validate", str(path)]) == 0
    finally:
        BASELINES.remove(ref)

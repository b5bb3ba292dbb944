"""Issue 14's speed settings of the training loop (stitch/engine.py): loss sums kept on the device
and read every ``sync_every`` micro-steps (the same history and callback values; a diverged run
still stops and names its step), ``precision`` (bf16 autocast on CPU, fp16 = amp, the schedule
never stepped for a step the gradient scaler skipped), ``channels_last``, ``compile`` off changes
nothing, the training-batch transform hook, cuDNN benchmark when not deterministic, and run ids
unchanged by every new key at its default."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from yaml_snippets import tiny_shapes_unet

from stitch.build import stitch_variant
from stitch.config import TrainCfg, parse_experiment
from stitch.device_sums import EpochSums, sync_interval
from stitch.engine import Callback, Diverged, LoopState, train
from stitch.precision import ScheduledStep, training_precision
from stitch.runs import experiment_data, plan_runs, resolved_config
from stitch.seeding import set_deterministic
from stitch.tasks import make_task

CPU = torch.device("cpu")
TIMING = {"seconds", "train_images_per_s"}


class Recorder(Callback):
    """Every per-step value the loop hands out, in order, and the epoch sums the former loop kept
    on the host (``float(loss) * images`` and each part alike, added up in Python floats)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.sums: dict[int, dict[str, float]] = {}
        self.parts: dict[str, float] = {}

    def on_losses(self, epoch: int, step: int, parts: dict[str, float]) -> None:
        self.calls.append(("parts", epoch, step, dict(parts)))
        self.parts = parts

    def on_step(self, epoch: int, step: int, loss: float, images: int) -> None:
        self.calls.append(("step", epoch, step, loss, images))
        sums = self.sums.setdefault(epoch, {"loss": 0.0, "images": 0})
        sums["loss"] += loss * images
        sums["images"] += images
        for part, value in self.parts.items():
            sums[part] = sums.get(part, 0.0) + value * images
        self.parts = {}


class Tiny:
    """A width-4 U-Net (dropout on its logits) on 16 generated 32x32 images, ``ce+dice``, 2 per
    micro-batch: 4 micro-steps per epoch."""

    def __init__(self, tmp_path: Path) -> None:
        text = tiny_shapes_unet("speed", tmp_path / "data", 2) + "  loss: ce+dice\n"
        self.exp, self.data = experiment_data(parse_experiment(text, "speed.yaml"))
        self.task = make_task(self.exp.cfg.task, self.data, self.exp.cfg.train.loss)
        self.tmp = tmp_path

    def model(self, dropout: float = 0.3) -> nn.Module:
        return nn.Sequential(stitch_variant(self.exp, "Baseline", 0).model, nn.Dropout(dropout))

    def train(
        self,
        name: str,
        task: Any = None,
        callbacks: Any = (),
        batch_transform: Any = None,
        dropout: float = 0.3,
        **cfg: Any,
    ) -> tuple[LoopState, nn.Module]:
        model = self.model(dropout)
        train_cfg = self.exp.cfg.train.model_copy(update={"batch_size": 2, **cfg})
        args = (task or self.task, self.data.train, self.data.val, train_cfg, 0, CPU, self.tmp / name)
        state = train(model, *args, "miou", callbacks=callbacks, batch_transform=batch_transform)
        return state, model


class NaNAt:
    """The tiny task, but micro-step ``step`` of epoch ``epoch`` has a NaN loss; counts the
    micro-steps it computed."""

    def __init__(self, task: Any, epoch: int, step: int, value: float = float("nan")) -> None:
        self.task, self.at, self.value = task, (epoch, step), value
        self.calls = 0

    def loss(self, model: nn.Module, batch: Any) -> Any:
        self.calls += 1
        loss, parts = self.task.loss(model, batch)
        epoch, step = (self.calls - 1) // 4 + 1, (self.calls - 1) % 4 + 1
        return (loss * self.value if (epoch, step) == self.at else loss), parts

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        return self.task.evaluate(*args, **kwargs)


def untimed(state: LoopState) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in state.history]


def test_device_sums_equal_the_former_host_sums_and_sync_every_changes_nothing(tmp_path: Path) -> None:
    """The stored train_loss and part means are bit for bit the former host float sums; reading
    every 3 micro-steps instead of every one (grad_accum 2 too) gives the same history, the same
    callback values in the same order, and the same weights."""
    tiny = Tiny(tmp_path)
    every, batched = Recorder(), Recorder()
    a, model_a = tiny.train("a", callbacks=[every], grad_accum=2)
    b, model_b = tiny.train("b", callbacks=[batched], grad_accum=2, sync_every=3)
    assert untimed(a) == untimed(b)
    assert every.calls == batched.calls and len(every.calls) == 2 * 4 * 2
    for x, y in zip(model_a.state_dict().values(), model_b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    for record in a.history:
        sums = every.sums[record["epoch"]]
        assert record["train_loss"] == sums["loss"] / sums["images"]  # exactly, not approximately
        assert record["train_loss_ce"] == sums["ce"] / sums["images"]
        assert record["train_loss_dice"] == sums["dice"] / sums["images"]
    assert sync_interval(None, CPU) == 1 and sync_interval(None, torch.device("cuda")) == 50
    assert sync_interval(7, torch.device("cuda")) == 7


def test_a_non_finite_loss_stops_within_sync_every_steps_naming_its_step(tmp_path: Path) -> None:
    """Read every step (the CPU default), the NaN at epoch 2 step 2 stops the run before its
    backward pass; read every 3 steps, the run stops at the next read (step 3), the message still
    names step 2 and the callbacks got the steps before it; a non-finite loss in an epoch's last
    steps is caught at the epoch's end, before its checkpoint."""
    tiny = Tiny(tmp_path)
    seen = Recorder()
    task = NaNAt(tiny.task, 2, 2)
    with pytest.raises(Diverged, match=r"^training loss is nan at epoch 2, step 2$"):
        tiny.train("every", task=task, callbacks=[seen])
    assert task.calls == 4 + 2 and seen.calls[-1][:3] == ("step", 2, 1)
    seen, task = Recorder(), NaNAt(tiny.task, 2, 2)
    with pytest.raises(Diverged, match=r"^training loss is nan at epoch 2, step 2$"):
        tiny.train("three", task=task, callbacks=[seen], sync_every=3)
    assert task.calls == 4 + 3 and seen.calls[-1][:3] == ("step", 2, 1)
    task = NaNAt(tiny.task, 1, 3, float("inf"))
    with pytest.raises(Diverged, match=r"^training loss is inf at epoch 1, step 3$"):
        tiny.train("late", task=task, sync_every=50)
    assert task.calls == 4 and not list((tmp_path / "late").glob("epoch-*.pt"))


def test_epoch_sums_read_in_one_transfer() -> None:
    sums = EpochSums(CPU, loss_sum=1.5, images=2, part_sums={"ce": 1.0, "dice": 0.5})
    sums.add(3, 2, torch.tensor(0.25), {"ce": torch.tensor(0.125), "dice": 0.125})
    sums.add(4, 1, torch.tensor(0.5), {"total": torch.tensor(0.5)})  # one part: not kept
    read = sums.flush()
    assert [(r.step, r.images, r.loss, r.parts) for r in read] == [
        (3, 2, 0.25, {"ce": 0.125, "dice": 0.125}),
        (4, 1, 0.5, {}),
    ]
    assert sums.flush() == [] and sums.images == 5
    assert sums.host() == (1.5 + 0.5 + 0.5, {"ce": 1.25, "dice": 0.75})


def test_precision_keys_validate_and_resolve() -> None:
    assert TrainCfg(amp=True).amp and TrainCfg(amp=True, precision="fp16").amp
    with pytest.raises(ValidationError, match=r"amp: true means precision fp16, not 'bf16'"):
        TrainCfg(amp=True, precision="bf16")
    cuda = torch.device("cuda")
    assert training_precision(TrainCfg(), CPU).dtype is None
    assert training_precision(TrainCfg(amp=True), CPU).dtype is None  # fp16 is for CUDA only
    assert training_precision(TrainCfg(precision="fp16"), cuda).scale
    assert training_precision(TrainCfg(amp=True), cuda).dtype is torch.float16
    bf16 = training_precision(TrainCfg(precision="bf16"), CPU)
    assert bf16.dtype is torch.bfloat16 and not bf16.scale


def test_new_keys_at_their_default_keep_run_ids(tmp_path: Path) -> None:
    """sync_every is never part of a run id; precision fp32, channels_last and compile off are
    left out; precision fp16 is amp: true (the same run)."""
    text = tiny_shapes_unet("ids", tmp_path / "data", 1)
    exp = parse_experiment(text, "ids.yaml")
    base = plan_runs(exp)[0]
    assert not {"precision", "channels_last", "compile", "sync_every"} & set(base.config["train"])
    spelled = text + "  precision: fp32\n  channels_last: false\n  compile: false\n  sync_every: 5\n"
    assert plan_runs(parse_experiment(spelled, "ids.yaml"))[0].run_id == base.run_id
    amp = plan_runs(parse_experiment(text + "  amp: true\n", "ids.yaml"))[0]
    fp16 = plan_runs(parse_experiment(text + "  precision: fp16\n", "ids.yaml"))[0]
    assert amp.run_id == fp16.run_id != base.run_id
    for key, value in (("precision", "bf16"), ("channels_last", "true"), ("compile", "true")):
        other = parse_experiment(text + f"  {key}: {value}\n", "ids.yaml")
        config = resolved_config(other, base.variant, 0, 1)
        assert key in config["train"] and plan_runs(other)[0].run_id != base.run_id


def test_bf16_autocast_trains_on_cpu(tmp_path: Path) -> None:
    tiny = Tiny(tmp_path)
    losses: list[float] = []

    class Losses(Callback):
        def on_step(self, epoch: int, step: int, loss: float, images: int) -> None:
            losses.append(loss)

    seen: list[torch.dtype] = []
    original = tiny.task.loss

    def loss(model: nn.Module, batch: Any) -> Any:
        handle = model[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        try:
            return original(model, batch)
        finally:
            handle.remove()

    tiny.task.loss = loss  # type: ignore[method-assign]
    state, _ = tiny.train("bf16", callbacks=[Losses()], precision="bf16", epochs=1)
    assert seen and set(seen) == {torch.bfloat16}
    assert len(losses) == 4 and all(isinstance(v, float) for v in losses)
    assert state.epoch == 1 and 0 < state.history[0]["train_loss"] < 10


def test_the_schedule_is_not_stepped_for_a_step_the_scaler_skipped() -> None:
    """A gradient scaler (enabled on CPU here; the loop enables it for fp16 on CUDA) skips the
    optimiser step of an infinite gradient: the schedule stays, without torch's warning about
    lr_scheduler.step() before optimizer.step(); the next finite step moves both."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    step = ScheduledStep(optimizer, scheduler, scaler)
    before = model.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaler.scale(model(torch.ones(1, 2)).sum() * float("inf")).backward()
        assert not step(model.parameters(), 1.0)
        assert scheduler.last_epoch == 0 and optimizer.param_groups[0]["lr"] == 0.1
        assert torch.equal(model.weight, before) and step.skipped == 1
        scaler.scale(model(torch.ones(1, 2)).sum()).backward()
        assert step(model.parameters(), None)
    assert scheduler.last_epoch == 1 and optimizer.param_groups[0]["lr"] == 0.05
    assert not torch.equal(model.weight, before) and model.weight.grad is None


def test_channels_last_and_compile_off(tmp_path: Path) -> None:
    """channels_last trains the same run within rounding, with the model's weights in NHWC
    (without dropout: its masks are drawn in memory order, so NHWC draws others); compile: false
    is the run as before, bit for bit."""
    tiny = Tiny(tmp_path)
    plain, _ = tiny.train("plain", epochs=1, dropout=0.0)
    off, _ = tiny.train("off", epochs=1, dropout=0.0, compile=False)
    assert untimed(off) == untimed(plain)
    nhwc, model = tiny.train("nhwc", epochs=1, dropout=0.0, channels_last=True)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for key, value in untimed(plain)[0].items():
        assert untimed(nhwc)[0][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_batch_transform_applies_to_training_batches_only(tmp_path: Path) -> None:
    """The transform sees every training batch on the device and its result is what the task
    trains on; validation batches never go through it."""
    tiny = Tiny(tmp_path)
    made, trained = [], []

    def flip(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        assert batch["image"].device == CPU
        out = {**batch, "image": batch["image"].flip(-1), "mask": batch["mask"].flip(-1)}
        made.append(out["image"])
        return out

    original = tiny.task.loss

    def loss(model: nn.Module, batch: Any) -> Any:
        trained.append(batch["image"])
        return original(model, batch)

    tiny.task.loss = loss  # type: ignore[method-assign]
    state, _ = tiny.train("flip", batch_transform=flip, epochs=1)
    assert len(made) == 4 and all(a is b for a, b in zip(made, trained, strict=True))
    assert state.epoch == 1


def test_cudnn_benchmark_unless_deterministic() -> None:
    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        set_deterministic(False)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        set_deterministic(True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


def test_compile_true_compiles_the_model_in_place_on_its_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.compile hands the model, already on its device, to
    stitch.compile_model.compile_for_training (its own tests: tests/test_compile.py) and trains
    what it returns."""
    import stitch.compile_model

    tiny = Tiny(tmp_path)
    compiled: list[nn.Module] = []

    def record(model: nn.Module, **_: Any) -> nn.Module:
        assert next(model.parameters()).device == CPU
        compiled.append(model)
        return model

    monkeypatch.setattr(stitch.compile_model, "compile_for_training", record)
    state, model = tiny.train("compiled", epochs=1, compile=True)
    assert compiled == [model] and state.epoch == 1

"""The ``train:`` block: optimiser, learning-rate schedule, loss and the training loop's knobs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt, model_validator

from stitch.config.base import Strict

#: the most epochs a run may have (more is a typo, and would overflow the results database)
MAX_EPOCHS = 100_000


class OptimizerCfg(Strict):
    """The optimiser and its hyper-parameters, with the parameter groups of fine-tuning
    (:mod:`stitch.param_groups`): ``decay_norm_bias`` (false: no weight decay on norm and bias
    parameters) and ``lr_mult`` (learning-rate multipliers by module-path prefix, hook-point
    alias or ``inserted``)."""

    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    decay_norm_bias: StrictBool = False
    lr_mult: dict[Annotated[str, Field(min_length=1)], Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict
    )


class SchedulerCfg(Strict):
    """``step`` multiplies the rate by ``gamma`` every ``step_size`` epochs, or, with
    ``milestones``, after each listed epoch (Detectron's "1x" Mask R-CNN schedule: 12 epochs,
    milestones [8, 11])."""

    name: Literal["none", "cosine", "step", "poly"] = "cosine"
    warmup_epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)] = 0
    step_size: Annotated[int, Field(gt=0)] = 10
    milestones: list[Annotated[StrictInt, Field(gt=0)]] | None = None
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    power: Annotated[float, Field(gt=0)] = 0.9
    min_lr: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _milestones_for_step(self) -> SchedulerCfg:
        if self.milestones is not None:
            if self.name != "step":
                raise ValueError(f"milestones are read by the 'step' schedule only, not {self.name!r}")
            if not self.milestones or sorted(set(self.milestones)) != self.milestones:
                raise ValueError(f"milestones must be increasing epoch numbers, got {self.milestones}")
        return self


class TrainCfg(Strict):
    """The training recipe (the ``train:`` block)."""

    epochs: Annotated[StrictInt, Field(gt=0, le=MAX_EPOCHS)] = 20
    batch_size: Annotated[StrictInt, Field(gt=0)] = 8
    optimizer: OptimizerCfg = Field(default_factory=OptimizerCfg)
    scheduler: SchedulerCfg = Field(default_factory=SchedulerCfg)
    loss: Literal["ce", "dice", "ce+dice"] = "ce"
    grad_accum: Annotated[StrictInt, Field(gt=0)] = 1
    clip_grad_norm: Annotated[float, Field(gt=0)] | None = None
    amp: StrictBool = False
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    channels_last: StrictBool = False
    compile: StrictBool = False
    sync_every: Annotated[StrictInt, Field(gt=0)] | None = None
    async_checkpoint: StrictBool | None = None  # None: automatic (stitch.checkpoint_writer)
    deterministic: StrictBool = False
    eval_every: Annotated[StrictInt, Field(gt=0)] = 1
    keep_last: Annotated[StrictInt, Field(gt=0)] = 2

    @model_validator(mode="after")
    def _amp_is_fp16(self) -> TrainCfg:
        if self.amp and "precision" in self.model_fields_set and self.precision != "fp16":
            raise ValueError(
                f"amp: true means precision fp16, not {self.precision!r}; "
                "drop amp and keep precision (or set precision: fp16)"
            )
        return self

    @model_validator(mode="after")
    def _min_lr_below_lr(self) -> TrainCfg:
        if self.scheduler.min_lr > self.optimizer.lr:
            raise ValueError(
                f"scheduler.min_lr {self.scheduler.min_lr} is above optimizer.lr {self.optimizer.lr}; "
                "the schedule would raise the learning rate"
            )
        return self

"""The ``sweep:`` block: the Optuna search space (slots, module arguments, training values) and objectives."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, StrictInt, Tag, model_validator

from stitch.config.base import NAME_PATTERN, Mode, Strict


class RangeCfg(Strict):
    """A numeric search range: ``{low, high}``, ``log: true`` for a log scale, ``step`` for a grid
    of values; integers when ``low`` and ``high`` are both integers."""

    low: StrictInt | float
    high: StrictInt | float
    log: bool = False
    step: StrictInt | float | None = None

    @model_validator(mode="before")
    @classmethod
    def _finite(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("low", "high", "step"):
                value = data.get(key)
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"{key} must be a finite number, got {value}")
        return data

    @model_validator(mode="after")
    def _ordered(self) -> RangeCfg:
        if self.low >= self.high:
            raise ValueError(f"low must be below high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


def _search_kind(value: Any) -> str:
    """Which kind of search value ``value`` is: a mapping is a range, anything else choices."""
    return "range" if isinstance(value, (dict, RangeCfg)) else "choices"


#: a searched value: a list of choices (categorical) or a numeric range (told apart by their
#: YAML type, so a bad range reports the range's problem, not "Input should be a valid list")
SearchValue = Annotated[
    Annotated[list[Any], Tag("choices")] | Annotated[RangeCfg, Tag("range")],
    Discriminator(_search_kind),
]


class SlotCfg(Strict):
    """One insertion the sweep chooses: where (``at``, one of the candidates, or none when
    ``optional``), which module (``modules``), how (``modes``) and module arguments per module
    (``args: {SE: {rd_ratio: [0.0625, 0.25]}}``; a parameter exists only when its module is
    chosen)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=24)]
    at: Annotated[list[str], Field(min_length=1)]
    modules: Annotated[list[str], Field(min_length=1)]
    modes: list[Mode] | None = None
    optional: bool = True
    args: dict[str, dict[str, SearchValue]] = Field(default_factory=dict)


class ObjectiveCfg(Strict):
    """One objective of a sweep: a metric or cost name and the direction to optimise it in."""

    metric: str
    direction: Literal["maximize", "minimize"] | None = None  # default: maximize metrics, minimize costs


class SweepCfg(Strict):
    """Optuna search over insertion points, modules, modes, module arguments and training
    hyper-parameters (the ``sweep:`` block; run by ``stitch sweep``)."""

    trials: Annotated[StrictInt, Field(gt=0)] = 20
    epochs: Annotated[StrictInt, Field(gt=0)] | None = None
    seed: Annotated[StrictInt, Field(ge=0, lt=2**31)] = 0
    sampler: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    objectives: list[str | ObjectiveCfg] = Field(default_factory=list)
    slots: list[SlotCfg] = Field(default_factory=list)
    train: dict[str, SearchValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something_to_search(self) -> SweepCfg:
        if not self.slots and not self.train:
            raise ValueError(
                "a sweep needs 'slots' (insertions to place) or 'train' (hyper-parameters) to search"
            )
        names = [s.name for s in self.slots]
        if len(set(names)) != len(names):
            raise ValueError(f"slot names repeat: {names}")
        return self

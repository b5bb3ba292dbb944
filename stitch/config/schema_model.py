"""The model side of an experiment: the baseline and the insertions (with nesting)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from stitch.config.base import NAME_PATTERN, Mode, Strict


class BaselineCfg(Strict):
    """The network the insertions go into: a registered baseline name and its arguments."""

    model: str
    args: dict[str, Any] = Field(default_factory=dict)


class NestedInsertionCfg(Strict):
    """A module inserted into a hook point of another zoo module (nesting)."""

    module: str
    args: dict[str, Any] = Field(default_factory=dict)
    at: str | list[str]
    mode: Mode | None = None
    residual_scale: float | None = None
    nest: list[NestedInsertionCfg] = Field(default_factory=list)

    @field_validator("at", mode="before")
    @classmethod
    def _at_is_names(cls, v: Any) -> Any:
        if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
            raise ValueError(
                f"must be a hook-point name or pattern, or a list of them (got {v!r}); "
                "`stitch points` lists them"
            )
        return v

    @field_validator("at")
    @classmethod
    def _at_not_empty(cls, v: str | list[str]) -> str | list[str]:
        if (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v):
            raise ValueError("needs at least one hook point or pattern")
        return v

    @property
    def patterns(self) -> list[str]:
        """``at`` as a list of hook-point names or patterns."""
        return [self.at] if isinstance(self.at, str) else list(self.at)


class InsertionCfg(NestedInsertionCfg):
    """One insertion: ``name`` labels it in tables, ``module`` is a zoo name, ``at`` hook points."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=24)]

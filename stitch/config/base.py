"""What every schema block shares: strict keys and the names used by several blocks."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

#: how an insertion joins its hook point (``mode:`` of an insertion, ``modes:`` of a sweep slot)
Mode = Literal["after", "before", "residual", "replace"]
#: the ablation designs (``ablation.design``)
Design = Literal["none", "one-at-a-time", "leave-one-out", "full-factorial", "subsets"]
#: a name that labels table rows and run directories (experiments, insertions, sweep slots)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class Strict(BaseModel):
    """Base of every schema block: unknown keys are errors, and so are infinite and NaN numbers
    (``lr: .inf`` would pass every bound and make every run diverge)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

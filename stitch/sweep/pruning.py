"""Pruning while a trial trains: the watched metric of every epoch goes to the Optuna trial, and
the pruner (median, Hyperband) may stop the run early."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from stitch.engine import Callback, LoopState, StopTraining

if TYPE_CHECKING:
    from optuna.trial import Trial


class PruneWeakTrial(Callback):
    """Reports the watched metric of every epoch to the trial and stops training
    (:class:`~stitch.engine.StopTraining`) when the pruner says so, never after the last epoch."""

    def __init__(self, trial: Trial, metric: str, epochs: int) -> None:
        self.trial, self.metric, self.epochs = trial, metric, epochs

    def on_epoch(self, state: LoopState, record: dict[str, Any]) -> None:
        value = record.get(self.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        epoch = int(record["epoch"])
        self.trial.report(float(value), epoch)
        if epoch < self.epochs and self.trial.should_prune():
            raise StopTraining(f"pruned at epoch {record['epoch']} ({self.metric} {value:.4f})")

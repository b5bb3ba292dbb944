"""``stitch sweep``: Optuna chooses where, which module and how to stitch, and training
hyper-parameters; each trial trains through the same path as ``stitch run`` and is a run in the
results database.

- Search space (the experiment's ``sweep:`` block, :class:`stitch.config.SweepCfg`), define-by-run:
  :mod:`stitch.sweep.space`.
- A choice that cannot be stitched (channel mismatch, a fusion module at a one-input point, a mode
  the module cannot take) is found by building and probing the variant before any training; the
  trial is pruned with the reason in its ``invalid`` user attribute and never trains
  (:mod:`stitch.sweep.trial`).
- The objective is the primary validation metric at the run's best epoch (maximised), reported
  per epoch so the pruner (median by default, Hyperband) stops weak trials. Several objectives
  (a metric and ``params``, ``flops`` or ``latency_ms``) give a Pareto front (NSGA-II)
  (:mod:`stitch.sweep.objectives`, :mod:`stitch.sweep.samplers`).
- Storage: ``sqlite:///RUN_DIR/sweep.sqlite`` unless ``--storage URL`` (any SQLAlchemy URL, e.g.
  PostgreSQL shared by several workers). Re-running continues the study until ``trials``
  distinct configurations have been decided (complete or pruned; a trial that reuses a result
  counts for nothing), with the sampler seeded from the study's trial count so that it continues
  rather than replays; a finite space is run to its end and no further. A trial whose worker died
  (no heartbeat) or that was interrupted is retried with the same parameters (an interrupted
  retry again, a failed one once); its run resumes from its checkpoint, and a configuration
  trained before is never trained again (runs are keyed by their config's hash)
  (:mod:`stitch.sweep.study`, :mod:`stitch.sweep.distinct`, :mod:`stitch.sweep.runner`).
- Outputs in ``RUN_DIR/sweep/``: ``trials.csv``/``trials.md``, ``best.yaml`` (a runnable
  experiment of the best trial) and plots from ``optuna.visualization.matplotlib``
  (:mod:`stitch.sweep.outputs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stitch.sweep.check import check_sweep
    from stitch.sweep.runner import SweepResult, run_sweep

__all__ = ["SweepResult", "check_sweep", "run_sweep"]


def __getattr__(name: str) -> Any:
    # lazy: `stitch validate` of a sweep file needs check_sweep only, not optuna's study machinery,
    # TensorBoard and the training session that running a sweep imports
    if name == "check_sweep":
        from stitch.sweep.check import check_sweep

        return check_sweep
    if name in ("SweepResult", "run_sweep"):
        from stitch.sweep import runner

        return getattr(runner, name)
    raise AttributeError(name)

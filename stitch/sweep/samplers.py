"""Optuna samplers and pruners by the names ``sweep.sampler`` and ``sweep.pruner`` take; the
registries :data:`stitch.registry.SAMPLERS` and :data:`stitch.registry.PRUNERS` name these
functions. A sampler factory takes ``(sweep cfg, seed, multi_objective)``, a pruner factory the
number of epochs a trial trains."""

from __future__ import annotations

import optuna

from stitch.config import SweepCfg
from stitch.hashing import digest
from stitch.sweep.space import grid_space


def sampler_seed(base: int, trials_before: int, worker: int | None = None) -> int:
    """The sampler's seed: ``base`` (``sweep.seed``) for a study without trials, so that a sweep
    run in one go is reproducible; for a study that already holds ``trials_before`` trials, a seed
    drawn from both, so that a resumed sweep continues the search rather than replaying the
    proposals of its first start; on a shared storage the worker's process id is added (workers
    would otherwise all propose the same parameters)."""
    seed = base if trials_before == 0 else int(digest([base, trials_before], length=8), 16)
    return (seed + 7919 * worker) % 2**31 if worker is not None else seed


def tpe_sampler(sweep: SweepCfg, seed: int, multi_objective: bool) -> optuna.samplers.BaseSampler:
    """TPE; NSGA-II when there are several objectives."""
    if multi_objective:
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def random_sampler(sweep: SweepCfg, seed: int, multi_objective: bool) -> optuna.samplers.BaseSampler:
    """Parameters drawn independently at random."""
    return optuna.samplers.RandomSampler(seed=seed)


def grid_sampler(sweep: SweepCfg, seed: int, multi_objective: bool) -> optuna.samplers.BaseSampler:
    """Every point of the grid (:func:`stitch.sweep.space.grid_space`) once, in random order."""
    return optuna.samplers.GridSampler(grid_space(sweep), seed=seed)


def nsga2_sampler(sweep: SweepCfg, seed: int, multi_objective: bool) -> optuna.samplers.BaseSampler:
    """NSGA-II (a Pareto front for several objectives)."""
    return optuna.samplers.NSGAIISampler(seed=seed)


def median_pruner(epochs: int) -> optuna.pruners.BasePruner:
    """A trial stops when its metric is below the median of earlier trials at the same epoch,
    from the second half of its epochs on and once 3 trials have finished (early epochs of a
    network trained from scratch say little: a U-Net's foreground IoU often stays flat for a few
    epochs, then jumps)."""
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=epochs // 2 + 1)


def hyperband_pruner(epochs: int) -> optuna.pruners.BasePruner:
    """Optuna's Hyperband, from 1 epoch to all of them."""
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)


def none_pruner(epochs: int) -> optuna.pruners.BasePruner:
    """Every trial trains all its epochs."""
    return optuna.pruners.NopPruner()

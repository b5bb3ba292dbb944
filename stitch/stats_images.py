"""A bootstrap over seeds x test images of the paired difference of a pooled metric.

The t-interval and the bootstrap of :mod:`stitch.stats` resample seeds only: they treat the test
images as fixed, so they say how much the result moves with training noise, not with the choice
of test images. With 4 test tiles the second matters as much. This bootstrap resamples both
(a two-way crossed design): in each replicate the same resample of test images is applied to
every seed and to both arms (an image is paired across variants and seeds), and seeds are
resampled as whole pairs. Per replicate and seed, each arm's metric is recomputed from the sum of
its resampled per-image confusion matrices (so pooled metrics such as mIoU stay pooled, never a
mean of per-image values), and the replicate's value is the mean paired difference over the
resampled seeds. The interval is the percentile interval of the replicates.

scipy's ``bootstrap`` resamples one index shared by all samples (``paired=True``) and cannot
resample two crossed factors, so the resampling is written here (a few lines of NumPy); for one
seed it is the ordinary paired bootstrap over images. No torch: the caller passes ``score``, a
function from a stack of pooled confusion matrices to metric values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

#: replicates of the seeds x images bootstrap (each scores 2 x seeds pooled matrices)
IMAGE_BOOTSTRAP_RESAMPLES = 2000
IMAGE_BOOTSTRAP_SEED = 0  # fixed, so a report is the same every time it is written

Score = Callable[[np.ndarray], np.ndarray]  # (..., K, K) counts -> (...) metric values


def seeds_images_interval(
    variant: Mapping[int, Sequence[Sequence[Sequence[int]]]],
    reference: Mapping[int, Sequence[Sequence[Sequence[int]]]],
    score: Score,
    level: float = 0.95,
    resamples: int = IMAGE_BOOTSTRAP_RESAMPLES,
    seed: int = IMAGE_BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile interval at ``level`` of the mean paired difference ``score(variant) -
    score(reference)`` over seeds, resampling seeds and test images (module docstring).

    ``variant``/``reference``: ``{seed: per-image confusion matrices}`` (images in the same order
    in every run). Seeds in both are used; NaN when none is, or when the runs disagree on the
    number of images. Replicates whose difference is undefined (a class absent from every
    resampled image) are dropped; NaN when more than half are."""
    seeds = sorted(set(variant) & set(reference))
    if not seeds or len({len(arm[s]) for arm in (variant, reference) for s in seeds}) != 1:
        return math.nan, math.nan  # no common seed, or runs scored on different numbers of images
    var = np.asarray([variant[s] for s in seeds], dtype=np.float64)  # S x N x K x K
    ref = np.asarray([reference[s] for s in seeds], dtype=np.float64)
    if var.ndim != 4 or var.shape != ref.shape or var.shape[1] == 0:
        return math.nan, math.nan
    n_seeds, n_images, k, _ = var.shape
    rng = np.random.default_rng(seed)
    # image weights: how often each image is drawn in each replicate (R x N), the same for all seeds
    image_weights = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=resamples)
    seed_weights = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=resamples)  # R x S

    def pooled(arm: np.ndarray) -> np.ndarray:  # R x S x K x K, one matrix product
        flat = arm.transpose(1, 0, 2, 3).reshape(n_images, n_seeds * k * k)
        return (image_weights @ flat).reshape(resamples, n_seeds, k, k)

    diffs = score(pooled(var)) - score(pooled(ref))  # R x S
    drawn = seed_weights > 0  # an undefined difference counts only when its seed is drawn
    values = (np.where(drawn, diffs, 0.0) * seed_weights).sum(1) / n_seeds
    values = values[~np.isnan(values)]
    if values.size < resamples / 2:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)

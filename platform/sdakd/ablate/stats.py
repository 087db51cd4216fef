"""The statistics of a grid report: a mean with its 95 % CI over seeds, and the paired difference of a cell to the
grid's reference cell.

Every cell of a grid sees, for a given seed, the same batches, crops and initial weights as every other; its test
images are the same too. So cells are compared in pairs: per seed (a paired t-test over seeds, scipy's
`ttest_rel`), and per (seed, image) by a two-level bootstrap that resamples seeds and test images with replacement
(the images are a sample too: a difference that holds on two photos and reverses on the third is not one).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import t as student_t
from scipy.stats import ttest_rel

from sdakd.ablate.power import ALPHA, detectable_effect, seeds_needed

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # a report is a pure function of its runs

PerImage = Mapping[int, Mapping[str, float]]  # seed -> image -> value


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and the 95 % confidence half-width from the t-distribution (None with fewer than two values)."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, float(student_t.ppf(1 - ALPHA / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


@dataclass(frozen=True)
class Paired:
    """A cell minus the reference cell, on one metric."""

    n_seeds: int
    n_images: int
    diff: float  # mean over the shared seeds of (cell - reference)
    ci95: float | None  # t half-width over seeds (None with one seed)
    p_t: float | None  # paired t-test over seeds (None with one seed or identical values)
    boot_low: float | None  # 2.5 and 97.5 percentiles of the (seed, image) bootstrap of the mean difference
    boot_high: float | None
    p_boot: float | None  # two-sided bootstrap p-value: twice the smaller tail beyond 0
    # the smallest |difference| the t-test over these seeds detects with 80 % power at the 5 % level, at the SD of
    # the per-seed differences measured here (None with one seed or differences that do not vary)
    detectable: float | None = None
    # the seeds that test would need to detect a difference of the observed size (80 % power, 5 % level): set
    # where the difference is not significant; inf for a difference of 0 (or beyond power.MOST_SEEDS)
    seeds_needed: float | None = None

    @property
    def significant(self) -> bool:
        """The paired t-test over seeds and the bootstrap (where runs kept per-image scores) both reject a zero
        difference at the 5 % level. One seed is never significant: it says nothing of how much a difference moves
        from one training run to the next, which the bootstrap over images alone cannot see."""
        return self.p_t is not None and self.p_t < ALPHA and (self.p_boot is None or self.p_boot < ALPHA)


def paired(reference: Mapping[int, float], cell: Mapping[int, float],
           reference_images: PerImage | None = None, cell_images: PerImage | None = None) -> Paired | None:
    """The cell against the reference over the seeds both have (None when they share none)."""
    seeds = sorted(set(reference) & set(cell))
    if not seeds:
        return None
    ref, mine = [reference[s] for s in seeds], [cell[s] for s in seeds]
    diffs = [m - r for m, r in zip(mine, ref)]
    diff, ci = mean_ci(diffs)
    # (differences that do not vary leave the t statistic undefined)
    p_t = float(ttest_rel(mine, ref).pvalue) if len(seeds) > 1 and statistics.pstdev(diffs) > 0 else None
    low = high = p_boot = None
    n_images = 0
    if reference_images is not None and cell_images is not None:
        matrix = _difference_matrix(seeds, reference_images, cell_images)
        if matrix is not None:
            n_images = matrix.shape[1]
            low, high, p_boot = bootstrap(matrix)
    result = Paired(len(seeds), n_images, float(diff), ci, p_t, low, high, p_boot)
    if p_t is None:
        return result
    spread = statistics.stdev(diffs)
    needed = None if result.significant else seeds_needed(diff / spread)
    return replace(result, detectable=detectable_effect(len(seeds)) * spread, seeds_needed=needed)


def _difference_matrix(seeds: Sequence[int], reference: PerImage, cell: PerImage) -> np.ndarray | None:
    """(seeds, images) of cell - reference over the images every seed of both has scored."""
    if not all(s in reference and s in cell for s in seeds):
        return None
    images = sorted(set.intersection(*(set(reference[s]) & set(cell[s]) for s in seeds)))
    if not images:
        return None
    return np.array([[cell[s][i] - reference[s][i] for i in images] for s in seeds], dtype=np.float64)


def bootstrap(differences: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
              seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """Percentile 95 % interval and two-sided p-value of the mean of a (seeds, images) difference matrix, resampling
    seeds and images independently with replacement (a two-level bootstrap)."""
    n_seeds, n_images = differences.shape
    rng = np.random.default_rng(seed)
    # how often each seed and each image is drawn in every resample; the resampled mean is then one contraction
    seed_counts = _draw_counts(rng, resamples, n_seeds)
    image_counts = _draw_counts(rng, resamples, n_images)
    means = np.einsum("bs,si,bi->b", seed_counts, differences, image_counts) / (n_seeds * n_images)
    low, high = np.percentile(means, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    p = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return float(low), float(high), p


def _draw_counts(rng: np.random.Generator, resamples: int, n: int) -> np.ndarray:
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], rng.integers(n, size=(resamples, n))), 1)
    return counts

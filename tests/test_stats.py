"""The report's statistics against scipy and against a hand computation."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from sdakd.ablate.stats import bootstrap, mean_ci, paired


def test_the_paired_t_test_and_interval_equal_scipy_and_the_formula() -> None:
    reference = {0: 28.1, 1: 27.9, 2: 28.4}
    cell = {0: 28.6, 1: 28.0, 2: 28.9, 7: 99.0}  # seed 7 has no partner: left out
    result = paired(reference, cell)
    mine, ref = [28.6, 28.0, 28.9], [28.1, 27.9, 28.4]
    assert result.n_seeds == 3
    assert result.p_t == pytest.approx(scipy_stats.ttest_rel(mine, ref).pvalue, rel=1e-12)
    diffs = np.subtract(mine, ref)
    half = scipy_stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    assert result.diff == pytest.approx(diffs.mean(), abs=1e-12) and result.ci95 == pytest.approx(half, rel=1e-12)
    assert mean_ci([1.0]) == (1.0, None) and mean_ci([]) == (None, None)


def test_one_seed_has_no_t_test_and_constant_differences_have_no_t_statistic() -> None:
    assert paired({0: 1.0}, {0: 2.0}).p_t is None
    assert paired({0: 1.0, 1: 2.0}, {0: 1.5, 1: 2.5}).p_t is None  # every difference 0.5: no variance
    assert paired({0: 1.0}, {1: 2.0}) is None
    images = {0: {f"im{i}": 1.0 for i in range(5)}}
    shifted = {0: {f"im{i}": 2.0 + 0.01 * i for i in range(5)}}
    one_seed = paired({0: 1.0}, {0: 2.02}, images, shifted)
    assert one_seed.p_boot < 0.05 and not one_seed.significant  # one training run: its noise is unknown


def test_the_two_level_bootstrap_equals_resampling_by_hand() -> None:
    differences = np.array([[0.3, -0.1, 0.5, 0.2], [0.1, 0.0, 0.4, -0.2]])
    low, high, p = bootstrap(differences, resamples=500, seed=3)
    rng = np.random.default_rng(3)
    seeds = rng.integers(2, size=(500, 2))
    images = rng.integers(4, size=(500, 4))
    means = np.array([differences[s][:, i].mean() for s, i in zip(seeds, images)])
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    assert p == pytest.approx(2 * min(np.mean(means <= 0), np.mean(means >= 0)), abs=1e-12)


def test_the_bootstrap_over_images_of_one_seed_agrees_with_scipy() -> None:
    rng = np.random.default_rng(0)
    diffs = rng.normal(0.4, 1.0, size=30)
    low, high, _ = bootstrap(diffs[None, :], resamples=20_000)
    theirs = scipy_stats.bootstrap((diffs,), np.mean, n_resamples=20_000, method="percentile", random_state=1)
    assert low == pytest.approx(theirs.confidence_interval.low, abs=0.03)
    assert high == pytest.approx(theirs.confidence_interval.high, abs=0.03)


def test_a_clear_difference_is_significant_and_noise_is_not() -> None:
    seeds = range(3)
    ref_images = {s: {f"im{i}": 28.0 + 0.1 * i for i in range(6)} for s in seeds}
    better = {s: {k: v + 0.5 + 0.01 * s for k, v in ref_images[s].items()} for s in seeds}
    mixed = {s: {k: v + (0.3 if i % 2 else -0.3) for i, (k, v) in enumerate(ref_images[s].items())} for s in seeds}
    mean = {s: float(np.mean(list(ref_images[s].values()))) for s in seeds}
    for cell, expected in ((better, True), (mixed, False)):
        cell_mean = {s: float(np.mean(list(cell[s].values()))) for s in seeds}
        result = paired(mean, cell_mean, ref_images, cell)
        assert result.n_images == 6 and result.significant is expected


def test_power_figures_equal_statsmodels() -> None:
    """The power of the paired t-test, the smallest difference n seeds detect and the seeds a difference needs,
    against statsmodels' TTestPower (alpha 0.05, power 0.8, two-sided). statsmodels' own solver stops at ~1e-7
    relative, so the solved figures are also checked by its power function at them (where it has a value: with 2
    seeds, or a power near 1, its lower tail is NaN; ours takes that tail by symmetry)."""
    from statsmodels.stats.power import TTestPower

    from sdakd.ablate.power import detectable_effect, power, seeds_needed

    theirs = TTestPower()
    compared = 0
    for n in (2, 3, 5, 10, 40):
        for effect in (0.1, 0.8, 2.5):
            expected = theirs.power(effect, n, 0.05)
            if not math.isnan(expected):  # NaN far out in the lower tail (n=40, effect 2.5: power 1)
                assert power(effect, n) == pytest.approx(expected, abs=1e-6)
                compared += 1
        d = detectable_effect(n)
        assert power(d, n) == pytest.approx(0.8, abs=1e-12)
        if n > 2:
            assert theirs.power(d, n, 0.05) == pytest.approx(0.8, abs=1e-9)
        assert d == pytest.approx(theirs.solve_power(None, nobs=n, alpha=0.05, power=0.8), rel=1e-6)
    for effect in (0.2, 0.5, 1.3, 3.0):
        needed = seeds_needed(effect)
        assert needed == math.ceil(theirs.solve_power(effect, nobs=None, alpha=0.05, power=0.8))
        assert theirs.power(effect, needed - 1, 0.05) < 0.8 <= theirs.power(effect, needed, 0.05)
    assert seeds_needed(0.0) == math.inf and compared >= 13


def test_a_paired_comparison_says_what_its_seeds_detect() -> None:
    from sdakd.ablate.power import detectable_effect, seeds_needed

    reference = {0: 28.1, 1: 27.9, 2: 28.4, 3: 28.0}
    noisy = {0: 28.3, 1: 27.7, 2: 28.9, 3: 27.9}  # differences +0.2, -0.2, +0.5, -0.1: not significant
    result = paired(reference, noisy)
    diffs = [0.2, -0.2, 0.5, -0.1]
    sd = float(np.std(diffs, ddof=1))
    assert not result.significant
    assert result.detectable == pytest.approx(detectable_effect(4) * sd, rel=1e-12)
    assert result.seeds_needed == seeds_needed(float(np.mean(diffs)) / sd) > 4
    clear = paired(reference, {s: v + 1.0 + 0.01 * s for s, v in reference.items()})
    assert clear.significant and clear.seeds_needed is None and clear.detectable is not None
    assert paired({0: 1.0}, {0: 2.0}).detectable is None  # one seed: no spread to plan with

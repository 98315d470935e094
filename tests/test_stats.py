"""popjax.stats against direct computations: brute-force bootstrap loops, scipy.stats.bootstrap,
exhaustive enumeration of the per-video swaps of the permutation test, and known cases."""
import itertools
import math

import numpy as np
import pytest
import scipy.stats

from popjax import metrics, search, stats


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _videos(n, seed=0):
    """Synthetic test set: a latent popularity, views that follow it, labels = views above median."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n)
    views = latent + 0.5 * rng.normal(size=n)
    labels = (views > np.median(views)).astype(int)
    return latent, labels, views


def _cell(latent, strength, n_seeds, seed, seed_noise=1.0):
    """A cell's predictions: every seed sees strength * latent plus its own noise."""
    rng = np.random.default_rng(seed)
    return _sigmoid(strength * latent[None] + seed_noise * rng.normal(size=(n_seeds, len(latent))))


def _seed_mean(values):
    return search.mean_std(list(values))[0]


def _brute_cell_replicates(p, labels, views, n_resamples, seed):
    """The bootstrap replicates by a Python loop over resamples, with popjax.metrics per seed."""
    n = p.shape[1]
    idx = np.random.default_rng(seed).integers(0, n, (n_resamples, n))
    out = {"accuracy": [], "spearman": []}
    for sel in idx:
        out["accuracy"].append(_seed_mean(metrics.accuracy(ps[sel], labels[sel]) for ps in p))
        out["spearman"].append(_seed_mean(metrics.spearman(ps[sel], views[sel]) for ps in p))
    return {m: np.array(v) for m, v in out.items()}


def _percentiles(values, confidence):
    values = values[~np.isnan(values)]
    tail = 100 * (1 - confidence) / 2
    return list(np.percentile(values, [tail, 100 - tail]))


# ------------------------------------------------------------------------------ 1. brute-force CI

def _tied_cells():
    """Small cells with ties, constant-on-resample seeds and tied views, so NaN replicates occur."""
    n = 12
    rng = np.random.default_rng(5)
    views = np.round(rng.normal(size=n), 1)
    views[:3] = views[3]  # tied views
    labels = (rng.random(n) < 0.5).astype(int)
    mixed = np.stack([
        np.round(rng.random(n), 1),                         # ordinary seed with ties
        np.where(np.arange(n) < 10, 0.3, 0.8),              # constant on a resample missing videos 10, 11
        rng.random(n),
    ])
    # Every seed constant except on video 4: the cell's Spearman is NaN on any resample without it.
    all_constant_but_one = np.full((2, n), 0.4)
    all_constant_but_one[:, 4] = [0.9, 0.6]
    return labels, views, {"mixed": mixed, "all_constant_but_one": all_constant_but_one}


@pytest.mark.parametrize("which", ["mixed", "all_constant_but_one"])
def test_bootstrap_equals_brute_force_loop(which):
    labels, views, cells = _tied_cells()
    p = cells[which]
    n_resamples, confidence, seed = 300, 0.9, 11
    brute = _brute_cell_replicates(p, labels, views, n_resamples, seed)
    if which == "all_constant_but_one":
        assert np.isnan(brute["spearman"]).sum() > 50  # the dropping of NaN replicates is exercised
    else:
        seed_nan = [np.isnan(metrics.spearman(p[1, sel], views[sel]))
                    for sel in np.random.default_rng(seed).integers(0, 12, (n_resamples, 12))]
        assert sum(seed_nan) > 20  # the leaving out of NaN seeds is exercised

    reps = stats.bootstrap_distribution(p, labels, views, n_resamples=n_resamples, seed=seed)
    summary = stats.cell_summary(p, labels, views, n_resamples=n_resamples, confidence=confidence, seed=seed)
    per_seed = stats.seed_metrics(p, labels, views)
    for m in stats.METRICS:
        np.testing.assert_array_equal(np.isnan(reps[m]), np.isnan(brute[m]))
        np.testing.assert_allclose(reps[m], brute[m], rtol=0, atol=1e-12)
        np.testing.assert_allclose(summary[m]["ci"], _percentiles(brute[m], confidence), rtol=0, atol=1e-12)
        # mean and std are popjax.search.mean_std of the per-seed metrics, exactly.
        expected_seeds = [metrics.accuracy(ps, labels) if m == "accuracy" else metrics.spearman(ps, views)
                          for ps in p]
        np.testing.assert_array_equal(per_seed[m], expected_seeds)
        assert (summary[m]["mean"], summary[m]["std"]) == search.mean_std(expected_seeds)


def test_paired_bootstrap_equals_brute_force_loop():
    latent, labels, views = _videos(15, seed=2)
    p_a, p_b = _cell(latent, 1.0, 3, seed=1), _cell(latent, 0.5, 2, seed=2)
    n_resamples, seed = 200, 4
    a = _brute_cell_replicates(p_a, labels, views, n_resamples, seed)
    b = _brute_cell_replicates(p_b, labels, views, n_resamples, seed)
    res = stats.paired_difference(p_a, p_b, labels, views, n_resamples=n_resamples, seed=seed)
    for m in stats.METRICS:
        sa, sb = stats.seed_metrics(p_a, labels, views)[m], stats.seed_metrics(p_b, labels, views)[m]
        assert res[m]["diff"] == pytest.approx(np.mean(sa) - np.mean(sb), abs=1e-15)
        np.testing.assert_allclose(res[m]["ci"], _percentiles(a[m] - b[m], 0.95), rtol=0, atol=1e-12)


def test_chunking_does_not_change_results(monkeypatch):
    latent, labels, views = _videos(40, seed=3)
    p_a, p_b = _cell(latent, 1.0, 3, seed=1), _cell(latent, 0.7, 3, seed=2)
    whole = (stats.cell_summary(p_a, labels, views, n_resamples=500),
             stats.paired_difference(p_a, p_b, labels, views, n_resamples=500))
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 1000)  # chunks of 8 resamples / permutations
    chunked = (stats.cell_summary(p_a, labels, views, n_resamples=500),
               stats.paired_difference(p_a, p_b, labels, views, n_resamples=500))
    assert chunked == whole


# --------------------------------------------------------------------- 2. scipy.stats.bootstrap

def _scipy_statistic(metric):
    def statistic(p, labels, views, axis=-1):
        if metric == "accuracy":
            return np.mean((p > 0.5).astype(int) == labels, axis=axis)
        return scipy.stats.pearsonr(scipy.stats.rankdata(p, axis=axis), scipy.stats.rankdata(views, axis=axis),
                                    axis=axis).statistic
    return statistic


def test_bootstrap_agrees_with_scipy_bootstrap():
    latent, labels, views = _videos(200, seed=7)
    p = _cell(latent, 1.5, 1, seed=8)
    summary = stats.cell_summary(p, labels, views, n_resamples=10000, seed=1)
    for m in stats.METRICS:
        ref = scipy.stats.bootstrap((p[0], labels, views), _scipy_statistic(m), paired=True, vectorized=True,
                                    n_resamples=10000, method="percentile", confidence_level=0.95, rng=2)
        ci = ref.confidence_interval
        assert summary[m]["ci"] == pytest.approx([ci.low, ci.high], abs=0.01)
        assert summary[m]["ci"][1] - summary[m]["ci"][0] > 0.05  # the tolerance is small against the width


# ---------------------------------------------------------------- 3. exact permutation p-values

def _brute_permutation_p(p_a, p_b, labels, views, metric):
    """Two-sided p-value by enumerating all 2^n per-video swaps (scipy's exact rule: p = 2 min(P(null <=
    obs), P(null >= obs)) with ties within 100 eps |obs|; NaN null values left out)."""
    fn = ((lambda ps: metrics.accuracy(ps, labels)) if metric == "accuracy"
          else (lambda ps: metrics.spearman(ps, views)))

    def stat(a, b):
        return _seed_mean(fn(ps) for ps in a) - _seed_mean(fn(ps) for ps in b)

    n = p_a.shape[1]
    observed = stat(p_a, p_b)
    null = []
    for mask in itertools.product([False, True], repeat=n):
        mask = np.array(mask)
        null.append(stat(np.where(mask, p_b, p_a), np.where(mask, p_a, p_b)))
    null = np.array(null)
    null = null[~np.isnan(null)]
    gamma = abs(100 * np.finfo(float).eps * observed)
    less = np.count_nonzero(null <= observed + gamma) / len(null)
    greater = np.count_nonzero(null >= observed - gamma) / len(null)
    return min(1.0, 2 * min(less, greater)), len(null)


@pytest.mark.parametrize("n,strength_b,data_seed", [(8, 0.3, 0), (9, 1.0, 1), (8, 0.0, 2)])
def test_permutation_p_equals_exhaustive_enumeration(n, strength_b, data_seed):
    latent, labels, views = _videos(n, seed=data_seed)
    p_a, p_b = _cell(latent, 1.5, 2, seed=10 + data_seed), _cell(latent, strength_b, 2, seed=20 + data_seed)
    res = stats.paired_difference(p_a, p_b, labels, views, n_resamples=2 ** n)  # 2^n <= n_resamples: exact
    for m in stats.METRICS:
        expected, count = _brute_permutation_p(p_a, p_b, labels, views, m)
        assert res[m]["p_value"] == expected
        assert (res[m]["p_value"] * count / 2) % 1 == 0 or res[m]["p_value"] == 1.0  # a multiple of 2 / 2^n


def test_permutation_unequal_seed_counts_uses_seed_averaged_predictions():
    n = 8
    latent, labels, views = _videos(n, seed=4)
    p_a, p_b = _cell(latent, 1.5, 2, seed=1), _cell(latent, 0.5, 3, seed=2)
    res = stats.paired_difference(p_a, p_b, labels, views, n_resamples=1000)
    for m in stats.METRICS:
        expected, _ = _brute_permutation_p(p_a.mean(0, keepdims=True), p_b.mean(0, keepdims=True),
                                           labels, views, m)
        assert res[m]["p_value"] == expected


def test_permutation_leaves_out_nan_null_values():
    # a = c d c d ..., b = d c d c ...: the swaps that make both cells constant give a NaN rho.
    n = 8
    _, labels, views = _videos(n, seed=6)
    p_a = np.where(np.arange(n) % 2 == 0, 0.2, 0.7)[None]
    p_b = np.where(np.arange(n) % 2 == 0, 0.7, 0.2)[None]
    res = stats.paired_difference(p_a, p_b, labels, views, n_resamples=1000)
    for m in stats.METRICS:
        expected, count = _brute_permutation_p(p_a, p_b, labels, views, m)
        assert count == (2 ** n - 2 if m == "spearman" else 2 ** n)
        assert res[m]["p_value"] == expected


def test_permutation_monte_carlo_when_too_many_swaps():
    latent, labels, views = _videos(60, seed=9)
    p_a, p_b = _cell(latent, 1.0, 2, seed=1), _cell(latent, 0.8, 2, seed=2)
    res = stats.paired_difference(p_a, p_b, labels, views, n_resamples=999)
    for m in stats.METRICS:
        k = res[m]["p_value"] * 1000 / 2  # (count + 1) / (n_resamples + 1), doubled
        assert 0 < res[m]["p_value"] <= 1 and (abs(k - round(k)) < 1e-9 or res[m]["p_value"] == 1.0)


# ------------------------------------------------------------------------------- 4. known cases

def test_cell_against_itself():
    latent, labels, views = _videos(50)
    p = _cell(latent, 1.0, 3, seed=1)
    res = stats.paired_difference(p, p, labels, views, n_resamples=500)
    for m in stats.METRICS:
        assert res[m] == {"diff": 0.0, "ci": [0.0, 0.0], "p_value": 1.0}


def test_same_setting_different_seeds_ci_contains_zero():
    latent, labels, views = _videos(150, seed=1)
    # The seed noise is small against the per-video spread, as between well-trained seeds; the data
    # are fixed, so the outcome is too.
    p_a = _cell(latent, 1.0, 5, seed=101, seed_noise=0.3)
    p_b = _cell(latent, 1.0, 5, seed=202, seed_noise=0.3)
    res = stats.paired_difference(p_a, p_b, labels, views, n_resamples=1000)
    for m in stats.METRICS:
        low, high = res[m]["ci"]
        assert low < 0 < high
        assert res[m]["p_value"] > 0.05


def test_much_better_cell_is_significant():
    latent, labels, views = _videos(150, seed=1)
    p_good, p_bad = _cell(latent, 3.0, 3, seed=1), _cell(latent, 0.0, 3, seed=2)
    res = stats.paired_difference(p_good, p_bad, labels, views, n_resamples=1000)
    for m in stats.METRICS:
        assert res[m]["diff"] > 0
        assert res[m]["ci"][0] > 0
        assert res[m]["p_value"] < 0.05


# ------------------------------------------------------------------ 5. reproducibility, edge cases

def test_same_seed_same_outputs():
    latent, labels, views = _videos(40)
    p_a, p_b = _cell(latent, 1.0, 3, seed=1), _cell(latent, 0.5, 3, seed=2)
    kwargs = dict(n_resamples=300, seed=3)
    assert stats.cell_summary(p_a, labels, views, **kwargs) == stats.cell_summary(p_a, labels, views, **kwargs)
    assert (stats.paired_difference(p_a, p_b, labels, views, **kwargs)
            == stats.paired_difference(p_a, p_b, labels, views, **kwargs))
    other = stats.cell_summary(p_a, labels, views, n_resamples=300, seed=4)
    same = stats.cell_summary(p_a, labels, views, **kwargs)
    for m in stats.METRICS:
        assert other[m]["mean"] == same[m]["mean"] and other[m]["ci"] != same[m]["ci"]


def test_one_seed():
    latent, labels, views = _videos(30)
    p = _cell(latent, 1.0, 1, seed=1)
    summary = stats.cell_summary(p, labels, views, n_resamples=200)
    assert stats.cell_summary(p[0], labels, views, n_resamples=200) == summary  # [n] is one seed
    assert summary["accuracy"]["mean"] == metrics.accuracy(p[0], labels)
    assert summary["spearman"]["mean"] == metrics.spearman(p[0], views)
    for m in stats.METRICS:
        assert summary[m]["std"] == 0.0
        assert summary[m]["ci"][0] <= summary[m]["mean"] <= summary[m]["ci"][1]


def test_constant_predictions():
    latent, labels, views = _videos(30)
    p_const = np.full((3, 30), 0.7)
    summary = stats.cell_summary(p_const, labels, views, n_resamples=200)
    assert summary["accuracy"] == {"mean": float(np.mean(labels == 1)), "std": 0.0,
                                   "ci": summary["accuracy"]["ci"]}
    assert all(np.isfinite(summary["accuracy"]["ci"]))
    assert math.isnan(summary["spearman"]["mean"]) and math.isnan(summary["spearman"]["std"])
    assert all(math.isnan(x) for x in summary["spearman"]["ci"])

    p = _cell(latent, 1.0, 3, seed=1)
    res = stats.paired_difference(p, p_const, labels, views, n_resamples=200)
    assert math.isnan(res["spearman"]["diff"]) and math.isnan(res["spearman"]["p_value"])
    assert all(math.isnan(x) for x in res["spearman"]["ci"])
    assert res["accuracy"]["diff"] == pytest.approx(np.mean(stats.seed_metrics(p, labels, views)["accuracy"])
                                                    - np.mean(labels == 1))
    assert 0 <= res["accuracy"]["p_value"] <= 1 and all(np.isfinite(res["accuracy"]["ci"]))


def test_bad_inputs():
    latent, labels, views = _videos(10)
    p = _cell(latent, 1.0, 2, seed=1)
    with pytest.raises(ValueError, match="shape"):
        stats.cell_summary(p, labels[:-1], views)
    with pytest.raises(ValueError, match="same test videos"):
        stats.paired_difference(p, p[:, :-1], labels, views)
    with pytest.raises(ValueError, match="confidence"):
        stats.cell_summary(p, labels, views, confidence=1.0)
    with pytest.raises(ValueError, match="labels"):
        stats.cell_summary(p, labels + 1, views)


def test_format_ci():
    assert stats.format_ci(0.8395, [0.7901, 0.8889], percent=True) == "83.95 [79.01, 88.89]"
    assert stats.format_ci(0.41234, (0.3, 0.5)) == "0.41 [0.30, 0.50]"
    assert stats.format_ci(-0.0001, [-0.02, 0.01]) == "0.00 [-0.02, 0.01]"
    assert stats.format_ci(math.nan, [math.nan, math.nan]) == "nan [nan, nan]"

"""Statistics of ablation studies: seed means, bootstrap intervals over test videos, paired tests.

A *cell* of a study is one setting trained with S seeds. Its test-set predictions are ``p`` [S, n]:
P(popular) from each seed on the same n test videos, with ``labels`` [n] (0/1) and ``views`` [n]
(normalised view counts). A seed's metrics are exactly ``popjax.metrics.accuracy(p[s], labels)`` and
``popjax.metrics.spearman(p[s], views)``. A cell's metric is the mean over its seeds, and its spread is
the standard deviation over seeds, both following ``popjax.search.mean_std``: seeds whose metric is
NaN are left out, ``ddof=1`` when more than one seed remains and 0 for one seed, NaN when none remains.

The intervals are percentile bootstraps over test videos: the n videos are resampled with replacement
(the same resample for every seed and, in a comparison, for both cells), each seed's metric is
recomputed on the resample and the seed-mean is taken by the rule above. The resample indices are
``np.random.default_rng(seed).integers(0, n, (n_resamples, n))``, drawn in one call, so a given seed
always gives the same interval. A resample on which the seed-mean metric is NaN (Spearman's rho when
every seed's predictions, or the views, are constant on the resample) is left out of the percentiles;
the interval is ``[nan, nan]`` when every resample is NaN.

The interval describes the variation due to the choice of test videos, with the trained seeds held
fixed; the variation between training seeds is what ``std`` reports.

The computations use numpy and scipy only (no JAX).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.stats

from popjax import metrics

METRICS = ("accuracy", "spearman")

# Resamples are processed in chunks of about this many predictions, to bound memory; the chunking
# does not change the result.
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------------- inputs

def _check_cell(p, labels, views, name="p") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.asarray(p, np.float64)
    if p.ndim == 1:
        p = p[None]
    labels = np.asarray(labels)
    views = np.asarray(views, np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"{name} must have shape [S, n] with S >= 1, got {p.shape}")
    n = p.shape[1]
    if n < 1:
        raise ValueError(f"{name} has no test videos (shape {p.shape})")
    if labels.shape != (n,) or views.shape != (n,):
        raise ValueError(f"labels and views must have shape ({n},) like {name}'s videos, "
                         f"got {labels.shape} and {views.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} has non-finite predictions")
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError("labels must be 0 or 1")
    if not np.all(np.isfinite(views)):
        raise ValueError("views has non-finite values")
    return p, labels.astype(np.int64), views


def _check_options(n_resamples, confidence) -> None:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


# ----------------------------------------------------------------------------------- seed-mean rules

def _mean_std(values) -> tuple[float, float]:
    """Mean and std over seeds by the rule of ``popjax.search.mean_std`` (NaN seeds left out)."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _seed_mean(values: np.ndarray) -> np.ndarray:
    """Mean over axis 0 leaving out NaN seeds; NaN where every seed is NaN (no warning)."""
    ok = ~np.isnan(values)
    count = ok.sum(axis=0)
    total = np.where(ok, values, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# --------------------------------------------------------------------------- vectorised metric rules

def _accuracy_rows(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``metrics.accuracy`` along the last axis: p [..., n], labels broadcastable to it."""
    return np.mean((p > 0.5).astype(np.int64) == labels, axis=-1)


def _centred_ranks(x: np.ndarray) -> np.ndarray:
    r = scipy.stats.rankdata(x, axis=-1)
    return r - r.mean(axis=-1, keepdims=True)


def _spearman_rows(p: np.ndarray, views: np.ndarray, view_ranks: np.ndarray | None = None) -> np.ndarray:
    """``metrics.spearman`` along the last axis: Pearson's r of average ranks, NaN when either side is
    constant (or has fewer than two videos). ``view_ranks``: ``_centred_ranks(views)`` if known."""
    rp = _centred_ranks(p)
    rv = _centred_ranks(views) if view_ranks is None else view_ranks
    num = np.sum(rp * rv, axis=-1)
    den = np.sqrt(np.sum(rp * rp, axis=-1) * np.sum(rv * rv, axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(rho, -1.0, 1.0)


def _cell_metric_rows(p: np.ndarray, labels: np.ndarray, views: np.ndarray,
                      view_ranks: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Seed-mean metrics of a cell on a batch of video selections.

    ``p`` is [S, B, m] (each seed's predictions on B selections of m videos), ``labels`` and ``views``
    are [B, m]; returns {metric: [B]}.
    """
    return {"accuracy": _seed_mean(_accuracy_rows(p, labels)),
            "spearman": _seed_mean(_spearman_rows(p, views, view_ranks))}


def _resample_indices(n: int, n_resamples: int, seed) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, (int(n_resamples), n))


def _chunks(total: int, per_item: int):
    size = max(1, _CHUNK_ELEMENTS // max(1, per_item))
    for start in range(0, total, size):
        yield slice(start, min(total, start + size))


def _percentile_ci(values: np.ndarray, confidence: float) -> list[float]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return [math.nan, math.nan]
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]


# --------------------------------------------------------------------------------------------- API

def seed_metrics(p, labels, views) -> dict[str, np.ndarray]:
    """Per-seed metrics of a cell: {"accuracy": [S], "spearman": [S]}, each seed's value computed by
    ``popjax.metrics.accuracy(p[s], labels)`` and ``popjax.metrics.spearman(p[s], views)``."""
    p, labels, views = _check_cell(p, labels, views)
    return {"accuracy": np.array([metrics.accuracy(ps, labels) for ps in p], np.float64),
            "spearman": np.array([metrics.spearman(ps, views) for ps in p], np.float64)}


def bootstrap_distribution(p, labels, views, *, n_resamples=2000, seed=0) -> dict[str, np.ndarray]:
    """The bootstrap replicates behind ``cell_summary``'s intervals: {metric: [n_resamples]}, the
    seed-mean metric on each resample of the test videos (NaN where undefined, not yet left out)."""
    p, labels, views = _check_cell(p, labels, views)
    _check_options(n_resamples, 0.5)
    idx = _resample_indices(p.shape[1], n_resamples, seed)
    out = {m: np.empty(len(idx)) for m in METRICS}
    for sl in _chunks(len(idx), p.size):
        rows = _cell_metric_rows(p[:, idx[sl]], labels[idx[sl]], views[idx[sl]])
        for m in METRICS:
            out[m][sl] = rows[m]
    return out


def cell_summary(p, labels, views, *, n_resamples=2000, confidence=0.95, seed=0) -> dict:
    """Summary of one cell: {metric: {"mean", "std", "ci": [low, high]}}.

    ``mean`` and ``std`` are over seeds (the ``popjax.search.mean_std`` rule: NaN seeds left out, ddof=1
    for S > 1, 0 for S = 1). ``ci`` is the ``confidence`` percentile bootstrap interval of the seed-mean
    metric over test videos (module docstring: one video resample shared by all seeds, resample
    indices ``default_rng(seed).integers(0, n, (n_resamples, n))``, NaN resamples left out).
    """
    p, labels, views = _check_cell(p, labels, views)
    _check_options(n_resamples, confidence)
    per_seed = seed_metrics(p, labels, views)
    boot = bootstrap_distribution(p, labels, views, n_resamples=n_resamples, seed=seed)
    out = {}
    for m in METRICS:
        mean, std = _mean_std(per_seed[m])
        out[m] = {"mean": mean, "std": std, "ci": _percentile_ci(boot[m], confidence)}
    return out


def _difference_rows(pa, pb, labels, views) -> dict[str, np.ndarray]:
    view_ranks = _centred_ranks(views)
    a = _cell_metric_rows(pa, labels, views, view_ranks)
    b = _cell_metric_rows(pb, labels, views, view_ranks)
    return {m: a[m] - b[m] for m in METRICS}


def _permutation_p_values(pa, pb, labels, views, n_resamples, seed) -> dict[str, float]:
    """Two-sided paired permutation test, per metric, of "a and b are exchangeable per video": each
    video's predictions (all seeds) go to the other cell with probability 1/2. pa, pb are [S, n]."""
    n = pa.shape[1]
    if n < 2:
        return {m: math.nan for m in METRICS}
    both = np.concatenate([pa, pb], axis=1)  # [S, 2n]: video i of a at i, of b at n + i

    view_ranks = _centred_ranks(views)  # a swap keeps every video in its position, so views stay put

    results = {}
    for m in METRICS:
        def statistic(ia, ib, axis=-1, m=m):
            # ia, ib: [..., n] indices into `both`; a swap of video i exchanges ia[i] and ib[i], so it
            # moves all of the video's seeds at once.
            ia = np.asarray(ia, np.intp)
            ib = np.asarray(ib, np.intp)
            batch_shape = ia.shape[:-1]
            ia, ib = ia.reshape(-1, n), ib.reshape(-1, n)
            if m == "accuracy":
                rows = [_seed_mean(_accuracy_rows(both[:, i], labels)) for i in (ia, ib)]
            else:
                rows = [_seed_mean(_spearman_rows(both[:, i], views, view_ranks)) for i in (ia, ib)]
            return (rows[0] - rows[1]).reshape(batch_shape)

        observed = float(statistic(np.arange(n), np.arange(n) + n))
        if math.isnan(observed):
            results[m] = math.nan
            continue
        batch = max(1, _CHUNK_ELEMENTS // (2 * both.shape[0] * n))
        res = scipy.stats.permutation_test(
            (np.arange(n), np.arange(n) + n), statistic, permutation_type="samples",
            vectorized=True, n_resamples=int(n_resamples), batch=batch, alternative="two-sided",
            rng=np.random.default_rng(seed))
        null = np.asarray(res.null_distribution, np.float64)
        if not np.any(np.isnan(null)):
            results[m] = float(res.pvalue)
        else:
            # scipy counts a NaN null value as less extreme than any observation; leave NaNs out
            # instead and apply scipy's rule to the rest.
            exact = 2 ** n <= n_resamples
            results[m] = _two_sided_p(null[~np.isnan(null)], observed, exact)
    return results


def _two_sided_p(null: np.ndarray, observed: float, exact: bool) -> float:
    """scipy.stats.permutation_test's two-sided p-value of ``observed`` given a null distribution."""
    if len(null) == 0:
        return math.nan
    gamma = abs(np.finfo(np.float64).eps * 100 * observed)
    adj = 0 if exact else 1
    less = (np.count_nonzero(null <= observed + gamma) + adj) / (len(null) + adj)
    greater = (np.count_nonzero(null >= observed - gamma) + adj) / (len(null) + adj)
    return float(np.clip(2 * min(less, greater), 0.0, 1.0))


def paired_difference(p_a, p_b, labels, views, *, n_resamples=2000, confidence=0.95, seed=0) -> dict:
    """Cell a against reference cell b on the same test videos: {metric: {"diff", "ci", "p_value"}}.

    ``diff`` is metric(a) - metric(b), each the seed mean (``cell_summary``'s rule); the seed counts
    S_a and S_b may differ. ``ci`` is the paired percentile bootstrap interval of the difference: one
    video resample, ``default_rng(seed).integers(0, n, (n_resamples, n))``, applied to both cells;
    resamples where the difference is NaN are left out.

    ``p_value`` is a two-sided paired permutation test of H0 "a and b are exchangeable per video", by
    ``scipy.stats.permutation_test(permutation_type="samples")`` with ``rng=default_rng(seed)``:

    * S_a == S_b: under H0 each video's predictions, all seeds together, are swapped between the cells
      with probability 1/2 (seed s of a is exchanged with seed s of b, so the seeds' order matters only
      through this pairing); the test statistic is ``diff``.
    * S_a != S_b: a per-video swap of unequal seed sets is not defined, so the test is on the per-video
      seed-averaged predictions (each cell becomes one [n] prediction vector) and its statistic is the
      metric difference of those averaged predictions, which is not in general ``diff``.

    All 2^n swaps are enumerated (an exact test) when 2^n <= n_resamples; otherwise n_resamples random
    swaps are drawn and p = (count + 1) / (n_resamples + 1). The p-value is NaN when the observed test
    statistic is NaN (a cell's Spearman undefined) or n < 2. Swaps whose statistic is NaN are left out of
    the null distribution (scipy alone would count them as less extreme than any observation).
    """
    p_a, labels, views = _check_cell(p_a, labels, views, "p_a")
    if np.ndim(p_b) not in (1, 2) or np.shape(p_b)[-1] != p_a.shape[1]:
        raise ValueError(f"p_a and p_b must be on the same test videos, got {p_a.shape} and {np.shape(p_b)}")
    p_b, _, _ = _check_cell(p_b, labels, views, "p_b")
    _check_options(n_resamples, confidence)

    seed_a, seed_b = seed_metrics(p_a, labels, views), seed_metrics(p_b, labels, views)
    diff = {m: _mean_std(seed_a[m])[0] - _mean_std(seed_b[m])[0] for m in METRICS}

    n = p_a.shape[1]
    idx = _resample_indices(n, n_resamples, seed)
    boot = {m: np.empty(len(idx)) for m in METRICS}
    for sl in _chunks(len(idx), p_a.size + p_b.size):
        rows = _difference_rows(p_a[:, idx[sl]], p_b[:, idx[sl]], labels[idx[sl]], views[idx[sl]])
        for m in METRICS:
            boot[m][sl] = rows[m]

    if p_a.shape[0] == p_b.shape[0]:
        test_a, test_b = p_a, p_b
    else:
        test_a, test_b = p_a.mean(axis=0, keepdims=True), p_b.mean(axis=0, keepdims=True)
    p_values = _permutation_p_values(test_a, test_b, labels, views, n_resamples, seed)

    return {m: {"diff": float(diff[m]), "ci": _percentile_ci(boot[m], confidence), "p_value": p_values[m]}
            for m in METRICS}


def format_ci(x, ci, percent=False, digits=2) -> str:
    """``x`` and its interval for a table, e.g. "83.95 [79.01, 88.89]"; ``percent`` multiplies all three
    by 100; NaN prints as "nan"."""
    scale = 100.0 if percent else 1.0
    fmt = lambda v: "nan" if v is None or math.isnan(v) else f"{round(scale * v, digits) + 0.0:.{digits}f}"  # noqa: E731
    return f"{fmt(x)} [{fmt(ci[0])}, {fmt(ci[1])}]"

"""The paper's evaluation protocol (Sec. 3): classification accuracy, and Spearman's rank correlation
between the predicted probability of the popular label and the normalised view count."""
from __future__ import annotations

import math

import numpy as np
import scipy.stats


def accuracy(p_popular, labels) -> float:
    """Fraction of videos whose predicted label (P(popular) > 0.5) equals the true label."""
    p_popular, labels = np.asarray(p_popular), np.asarray(labels)
    if len(labels) == 0:
        return math.nan
    return float(np.mean((p_popular > 0.5).astype(int) == labels))


def spearman(p_popular, normalized_views) -> float:
    """Spearman's rho (scipy, average ranks for ties); NaN when either side is constant or empty."""
    p, v = np.asarray(p_popular, np.float64), np.asarray(normalized_views, np.float64)
    if len(p) < 2 or np.all(p == p[0]) or np.all(v == v[0]):
        return math.nan
    return float(scipy.stats.spearmanr(p, v).statistic)


def evaluate(p_popular, labels, normalized_views) -> dict:
    return {"accuracy": accuracy(p_popular, labels), "spearman": spearman(p_popular, normalized_views),
            "n": int(len(labels))}


def selection_key(m: dict) -> tuple:
    """How runs are compared on validation: accuracy first, then Spearman (NaN counts as worst)."""
    nan_low = lambda x: -math.inf if x is None or math.isnan(x) else x  # noqa: E731
    return (nan_low(m["accuracy"]), nan_low(m["spearman"]))

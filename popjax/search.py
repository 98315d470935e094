"""Random hyperparameter search on validation (paper Sec. 3), with vmapped trials.

Trials are drawn from a search space; those that share their structural settings (``config.model``) are
trained together by one vmapped program (``training.fit``), so the search costs one compilation per
distinct shape, not per trial.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from popjax import training


KINDS = ("choice", "uniform", "log_uniform")


def check_space(space: Mapping[str, Sequence]) -> None:
    """Raise ValueError naming the first entry of ``space`` that ``sample_trials`` cannot draw from."""
    for key, spec in sorted(space.items()):
        kind = spec[0] if isinstance(spec, (tuple, list)) and spec else spec
        if kind not in KINDS:
            raise ValueError(f"search space entry {key!r}: unknown kind {kind!r} (expected one of {KINDS})")
        if kind == "choice" and len(spec) < 2:
            raise ValueError(f"search space entry {key!r}: 'choice' needs at least one value")
        if kind != "choice" and len(spec) != 3:
            raise ValueError(f"search space entry {key!r}: {kind!r} needs (low, high), got {tuple(spec[1:])}")


def sample_trials(base: Mapping[str, Any], space: Mapping[str, Sequence], num_trials: int, seed: int) -> list[dict]:
    """``num_trials`` hyperparameter dicts: ``base`` with the keys of ``space`` drawn at random.

    A space entry is ``("choice", a, b, ...)``, ``("uniform", low, high)`` or ``("log_uniform", low, high)``.
    """
    check_space(space)
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(num_trials):
        trial = dict(base)
        for key, spec in sorted(space.items()):
            kind, *args = spec
            if kind == "choice":
                value = args[int(rng.integers(len(args)))]
            elif kind == "uniform":
                value = float(rng.uniform(*args))
            else:  # log_uniform
                value = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
            trial[key] = value
        trials.append(trial)
    return trials


def static_part(trial: Mapping, static_keys: Sequence[str]) -> dict:
    """The structural part of ``trial``: its ``static_keys`` (the ``config.model`` fields)."""
    return {k: trial[k] for k in static_keys}


def group_by_shape(trials: Sequence[Mapping], static_keys: Sequence[str]) -> list[tuple[dict, list[int]]]:
    """[(static hyperparameters, indices of the trials that share them)], in first-appearance order."""
    groups: dict[str, tuple[dict, list[int]]] = {}
    for i, trial in enumerate(trials):
        static = static_part(trial, static_keys)
        groups.setdefault(repr(sorted(static.items())), (static, []))[1].append(i)
    return list(groups.values())


def run_trials(trials: Sequence[Mapping], data, *, static_keys: Sequence[str], workdir=None,
               **fit_kwargs) -> list[dict]:
    """Train every trial (grouped by ``static_keys`` and vmapped); returns per trial ``{"trial", "val", "test",
    "best_epoch"}``."""
    results: list[dict | None] = [None] * len(trials)
    for g, (static, idx) in enumerate(group_by_shape(trials, static_keys)):
        group_dir = None if workdir is None else f"{workdir}/group{g:02d}"
        fit = training.fit(data, static, [trials[i] for i in idx], workdir=group_dir, **fit_kwargs)
        for t, i in enumerate(idx):
            results[i] = {"trial": dict(trials[i]), "val": fit.val[t], "test": fit.test[t],
                          "best_epoch": fit.best_epoch[t]}
    return results


def best_trial(results: Sequence[Mapping]) -> dict:
    from popjax.metrics import selection_key

    return max(results, key=lambda r: selection_key(r["val"]))["trial"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


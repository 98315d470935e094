"""The gradient-boosted-trees baseline (``config.learner = "gbdt"``): the recipe of the winners of recent
social-media popularity challenges, on popjax's features.

Per video, the mean of its frame features (1/N sum_i x_i, the ResNet50 embeddings of the dataset) and the
mean GloVe vector of its headline (1/T sum_t w_t over its words; zeros for an empty headline) are
concatenated and standardised with the training split's per-column mean and standard deviation (as the neural
models standardise their frame features; histogram boosting bins each column by its quantiles, so the
standardisation keeps columns comparable in scale without changing what the trees can split on).
scikit-learn's ``HistGradientBoostingClassifier`` fits the two-class label; P(popular) is its probability of
class 1, scored with the paper's accuracy and Spearman like every other row.

Its settings are ``config.gbdt`` (``HistGradientBoostingClassifier`` arguments), tuned by the same random
search on validation (``config.search.num_trials`` draws from ``config.gbdt_space``), then trained with
``config.train.num_seeds`` seeds (``random_state``; with ``max_features`` < 1 each seed sees other column
subsets).
"""
from __future__ import annotations

import inspect
from typing import Mapping

import numpy as np

from popjax import metrics, runtime


def video_inputs(split: Mapping[str, np.ndarray], word_vectors: np.ndarray | None) -> np.ndarray:
    """[n, F + D]: the mean frame feature and the mean headline word vector of each video (either part
    absent when the split has no features / tokens)."""
    parts = []
    if "features" in split:
        parts.append(np.asarray(split["features"], np.float32).mean(axis=1))
    if "tokens" in split and word_vectors is not None:
        tokens, lengths = np.asarray(split["tokens"]), np.asarray(split["lengths"])
        mask = (np.arange(tokens.shape[1])[None] < lengths[:, None]).astype(np.float32)
        words = np.asarray(word_vectors, np.float32)[tokens] * mask[..., None]
        parts.append(words.sum(axis=1) / np.maximum(lengths, 1)[:, None].astype(np.float32))
    return np.concatenate(parts, axis=1)


def standardize(train: np.ndarray, *others: np.ndarray, eps: float = 1e-6) -> list[np.ndarray]:
    """Every array standardised with ``train``'s per-column mean and standard deviation."""
    mean, std = train.mean(axis=0), np.sqrt(train.var(axis=0) + eps)
    return [(x - mean) / std for x in (train, *others)]


def check_params(params: Mapping) -> None:
    """Raise ValueError naming a setting that ``HistGradientBoostingClassifier`` does not take."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    known = set(inspect.signature(HistGradientBoostingClassifier).parameters) - {"random_state"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"config.gbdt: {unknown} are not HistGradientBoostingClassifier settings; "
                         f"known: {sorted(known)}")


def fit_predict(x_train, y_train, evaluate: Mapping[str, np.ndarray], params: Mapping, seed: int) -> dict:
    """P(popular) of each array of ``evaluate`` from trees fitted on (``x_train``, ``y_train``)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(**dict(params), random_state=int(seed))
    model.fit(x_train, np.asarray(y_train))
    return {name: model.predict_proba(x)[:, 1] for name, x in evaluate.items()}


def fit(splits: Mapping[str, Mapping[str, np.ndarray]], word_vectors, trials, workers: int = 0) -> list[dict]:
    """Each trial (``config.gbdt`` settings plus ``seed``) fitted on train; per trial ``{"val", "test"}``
    metrics and ``"p_test"``, P(popular) of the test videos.

    The trials are fitted ``workers`` at a time (0: one per usable core), each on one OpenMP thread: a few
    hundred videos give one fit too little work to share between threads, and a one-thread fit's result does
    not depend on the machine's core count."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    x = {name: video_inputs(split, word_vectors) for name, split in splits.items()}
    x["train"], x["val"], x["test"] = standardize(x["train"], x["val"], x["test"])

    def one(trial):
        params = {k: v for k, v in trial.items() if k != "seed"}
        p = fit_predict(x["train"], splits["train"]["label"], {"val": x["val"], "test": x["test"]}, params,
                        trial["seed"])
        return {"val": metrics.evaluate(p["val"], splits["val"]["label"], splits["val"]["normalized_views"]),
                "test": metrics.evaluate(p["test"], splits["test"]["label"], splits["test"]["normalized_views"]),
                "p_test": p["test"]}

    workers = workers or runtime.usable_cores()
    with threadpool_limits(1), ThreadPoolExecutor(max(1, min(workers, len(trials)))) as pool:
        return list(pool.map(one, trials))

"""The gradient-boosted-trees baseline (popjax.gbdt): its inputs against a per-video loop, its predictions
against scikit-learn called directly, and its run as a train.py configuration."""
import json

import numpy as np
import pytest

from popjax import experiment, gbdt, metrics
from synthetic import load_config, write_features


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return write_features(tmp_path_factory.mktemp("synthetic"))["features"]


def test_inputs_are_the_mean_frame_feature_and_the_mean_word_vector():
    rng = np.random.default_rng(0)
    split = {"features": rng.normal(size=(4, 3, 5)).astype(np.float16),
             "tokens": rng.integers(0, 7, (4, 6)).astype(np.int32), "lengths": np.array([6, 2, 0, 1], np.int32)}
    vectors = rng.normal(size=(7, 2)).astype(np.float32)
    got = gbdt.video_inputs(split, vectors)
    for i in range(4):
        words = [vectors[split["tokens"][i, t]] for t in range(split["lengths"][i])]
        want_words = np.mean(words, axis=0) if words else np.zeros(2)
        want = np.concatenate([split["features"][i].astype(np.float32).mean(axis=0), want_words])
        np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-6)
    assert gbdt.video_inputs({k: split[k] for k in ("tokens", "lengths")}, vectors).shape == (4, 2)


def test_fit_equals_scikit_learn_on_the_standardised_inputs(features):
    from sklearn.ensemble import HistGradientBoostingClassifier

    data = experiment.load_data(features, "multimodal")
    splits, vectors = data["splits"], data["constants"]["headline_encoder"]["word_vectors"]
    trial = {"learning_rate": 0.1, "max_iter": 30, "max_leaf_nodes": 7, "max_features": 0.5, "max_bins": 32, "seed": 3}
    (result,) = gbdt.fit(splits, vectors, [trial])
    x = {k: gbdt.video_inputs(splits[k], vectors) for k in ("train", "test")}
    mean, std = x["train"].mean(0), np.sqrt(x["train"].var(0) + 1e-6)
    model = HistGradientBoostingClassifier(learning_rate=0.1, max_iter=30, max_leaf_nodes=7, max_features=0.5,
                                           max_bins=32, random_state=3).fit((x["train"] - mean) / std, splits["train"]["label"])
    p = model.predict_proba((x["test"] - mean) / std)[:, 1]
    np.testing.assert_array_equal(result["p_test"], p)
    assert result["test"] == metrics.evaluate(p, splits["test"]["label"], splits["test"]["normalized_views"])
    # The synthetic label follows planted cues in the frame features and the headline: well above chance.
    assert result["test"]["accuracy"] > 0.6


def test_trials_fitted_side_by_side_equal_each_fitted_alone(features):
    data = experiment.load_data(features, "multimodal")
    splits, vectors = data["splits"], data["constants"]["headline_encoder"]["word_vectors"]
    trials = [{"learning_rate": lr, "max_iter": it, "max_leaf_nodes": 7, "max_features": 0.5, "max_bins": 32,
               "seed": seed} for lr, it, seed in ((0.1, 20, 0), (0.3, 10, 1), (0.05, 30, 2), (0.2, 15, 3))]
    together = gbdt.fit(splits, vectors, trials, workers=2)
    for trial, got in zip(trials, together):
        (alone,) = gbdt.fit(splits, vectors, [trial], workers=1)
        np.testing.assert_array_equal(got["p_test"], alone["p_test"])
        assert got["val"] == alone["val"] and got["test"] == alone["test"]
    assert len({tuple(r["p_test"]) for r in together}) == len(trials)   # in the trials' order, not one repeated


def test_gbdt_run_searches_seeds_and_writes_metrics_and_predictions(features, tmp_path):
    config = load_config("gbdt", features, **{"search.num_trials": 3, "train.num_seeds": 2, "gbdt.max_iter": 20,
                                              "gbdt.max_bins": 32, "gbdt_space.max_iter": ("choice", 10, 20)})
    summary = experiment.train_and_evaluate(config, tmp_path)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["seeds"]["seed"] == [0, 1] and len(json.loads((tmp_path / "search.json").read_text())["trials"]) == 3
    p = np.load(tmp_path / "test_predictions.npy", allow_pickle=False)
    test = experiment.load_data(features, "multimodal")["splits"]["test"]
    assert p.shape == (2, len(test["label"]))
    for s in range(2):   # each seed's stored predictions give its reported test metrics
        assert metrics.accuracy(p[s], test["label"]) == summary["seeds"]["test_accuracy"][s]
    assert summary["test"]["accuracy"] > 0.6


def test_unknown_gbdt_setting_is_a_config_error(features, tmp_path):
    config = load_config("gbdt", features, **{"gbdt.max_leafs": 7})
    with pytest.raises(experiment.ConfigError, match="max_leafs"):
        experiment.train_and_evaluate(config, tmp_path)

"""Ablation studies (popjax.study): the data axes change exactly the arrays the model receives, a study of two
identical settings finds no difference, and a study writes its table, JSON, figure and every cell's run."""
import json

import numpy as np
import pytest

from popjax import experiment, study, workflow
from synthetic import NUM_FRAMES, load_config, write_features


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return write_features(tmp_path_factory.mktemp("synthetic"), num_videos=120)["features"]


@pytest.mark.parametrize("spec, want", [("all", range(6)), ("first:2", [0, 1]), (4, [0, 1, 2, 3]),
                                        ("every:2", [0, 2, 4]), ("every:4", [0, 4]),
                                        ("seconds:2", [0, 1]), ("seconds:2.6", [0, 1, 2])])
def test_frame_axis_gives_the_model_exactly_those_stored_frames(features, spec, want):
    full = experiment.load_data(features, "multimodal")
    seen = experiment.load_data(features, "multimodal", frames=spec)
    assert seen["frames"] == list(want)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(seen["splits"][split]["features"], full["splits"][split]["features"][:, want])
        for key in ("tokens", "lengths", "label", "normalized_views"):
            np.testing.assert_array_equal(seen["splits"][split][key], full["splits"][split][key])
    # The features are standardised with the statistics of the frames the model sees.
    f = full["splits"]["train"]["features"][:, want].astype(np.float32).reshape(-1, 2048)
    np.testing.assert_allclose(seen["constants"]["feature_norm"]["mean"], f.mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["first:0", f"first:{NUM_FRAMES + 1}", "every:0", "seconds:-1", "some", "x:3"])
def test_bad_frame_specs_are_config_errors(features, spec):
    with pytest.raises(experiment.ConfigError, match="config.data.frames"):
        experiment.check_config(load_config("video_attention", features, **{"data.frames": spec}))


def test_word_vector_axis_reembeds_the_vocabulary_from_the_other_file(features, tmp_path):
    from popjax.data.text import Vocabulary

    full = experiment.load_data(features, "headline")
    vocab = Vocabulary.load(features / "vocab.json")
    words = vocab.itos[2:]
    rng = np.random.default_rng(5)
    other = {w: rng.normal(size=3).round(4) for w in words[:-1]}   # the last word has no vector there
    glove = tmp_path / "glove.other.3d.txt"
    glove.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in other.items()) + "zebra 1 2 3\n")
    swapped = experiment.load_data(features, "headline", word_vectors=str(glove))
    table = swapped["constants"]["headline_encoder"]["word_vectors"]
    assert table.shape == (len(vocab), 3) and swapped["word_dim"] == 3
    np.testing.assert_array_equal(table[:2], 0.0)   # <pad>, <unk>
    for w in words:
        want = other.get(w, np.zeros(3))
        np.testing.assert_allclose(table[vocab.id_of(w)], want, rtol=0, atol=1e-6, err_msg=w)
    for split in ("train", "val", "test"):   # the same token ids: only the vectors changed
        np.testing.assert_array_equal(swapped["splits"][split]["tokens"], full["splits"][split]["tokens"])


def small_study(features, **overrides):
    config = load_config("video_attention", features, **{"train.num_seeds": 2, "train.num_epochs": 3,
                                                         "search.num_trials": 0})
    config.kind = "study"
    for key, value in overrides.items():
        config.study[key] = value
    return config


@pytest.mark.slow   # two cells trained
def test_two_identical_settings_differ_by_an_interval_containing_zero(features, tmp_path):
    same = {"model.frame_pooling": "mean"}
    config = small_study(features, variants=(("a", same), ("b", same)))
    result = workflow.run(config, tmp_path)
    b = result["cells"][1]
    assert [c["name"] for c in result["cells"]] == ["a", "b"] and result["reference"] == "a"
    for metric in ("accuracy", "spearman"):
        d = b["vs_reference"][metric]
        assert d["ci"][0] <= 0.0 <= d["ci"][1] and d["diff"] == 0.0 and d["p_value"] == 1.0
        assert b[metric]["mean"] == result["cells"][0][metric]["mean"]


@pytest.mark.slow   # four cells trained
def test_study_runs_every_cell_and_writes_table_json_and_figure(features, tmp_path):
    from PIL import Image

    config = small_study(features, grid=(("model.frame_pooling", ("mean", "attention")),
                                          ("data.frames", ("first:3", "all"))))
    result = workflow.run(config, tmp_path)
    names = ["frame_pooling=mean_frames=first:3", "frame_pooling=mean_frames=all",
             "frame_pooling=attention_frames=first:3", "frame_pooling=attention_frames=all"]
    assert [c["name"] for c in result["cells"]] == names
    on_disk = json.loads((tmp_path / "study.json").read_text())
    assert [c["name"] for c in on_disk["cells"]] == names and on_disk["n_test"] > 0
    for cell in on_disk["cells"]:
        cell_dir = tmp_path / "cells" / study.directory_name(cell["name"])
        metrics = json.loads((cell_dir / "metrics.json").read_text())
        # The study's per-cell mean is the run's own mean over seeds; the interval holds it.
        assert cell["accuracy"]["mean"] == pytest.approx(metrics["seeds"]["test_accuracy_mean"], abs=1e-12)
        assert cell["accuracy"]["ci"][0] <= cell["accuracy"]["mean"] <= cell["accuracy"]["ci"][1]
        assert cell["config"]["data"]["frames"] == cell["settings"]["data.frames"]
        assert sorted(p.name for p in (cell_dir / "tensorboard").iterdir()) == ["trial_00", "trial_01"]
    md = (tmp_path / "study.md").read_text()
    assert all(f"`{n}`" in md for n in names) and "reference" in md
    with Image.open(tmp_path / "study.png") as png:
        assert png.format == "PNG" and png.size[1] > 300
    # A finished study reruns without training: the same numbers.
    again = workflow.run(config, tmp_path)["cells"]
    assert json.loads(json.dumps(again)) == json.loads(json.dumps(result["cells"]))


def test_bad_study_fields_are_config_errors(features, tmp_path):
    with pytest.raises(experiment.ConfigError, match="model.frame_pool"):
        workflow.run(small_study(features, grid=(("model.frame_pool", ("mean",)),)), tmp_path)
    with pytest.raises(experiment.ConfigError, match="nothing to compare"):
        workflow.run(small_study(features), tmp_path)
    with pytest.raises(experiment.ConfigError, match="config.model.frame_pooling"):
        workflow.run(small_study(features, grid=(("model.frame_pooling", ("mean", "maxx")),)), tmp_path)


def test_the_figure_draws_means_outside_their_interval_and_undefined_values():
    """At a handful of test videos a seed mean can fall outside the bootstrap interval (resamples where Spearman
    is undefined are left out of it) and intervals can be NaN: the figure still draws."""
    from PIL import Image
    import io

    metric = lambda mean, lo, hi: {"mean": mean, "std": 0.0, "ci": [lo, hi]}   # noqa: E731
    diff = {"diff": -0.5, "ci": [-0.2, 0.1], "p_value": float("nan")}
    cells = [{"name": "a", "accuracy": metric(0.5, 0.5, 0.5), "spearman": metric(-1.0, 1.0, 1.0),
              "vs_reference": None},
             {"name": "b", "accuracy": metric(0.5, 0.6, 0.9), "spearman": metric(float("nan"), float("nan"),
                                                                                  float("nan")),
              "vs_reference": {"accuracy": diff, "spearman": diff}}]
    png = study.plot({"cells": cells, "reference": "a", "confidence": 0.95, "n_test": 2})
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"

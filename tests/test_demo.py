"""The README's main command end to end at a tiny size, and `popjax explain` on its model.

``python train.py`` runs in a subprocess exactly as a user runs it (one JAX CPU device per core), on a
40-video demo corpus with no search (test_training covers it), one seed and a few epochs: every stage must run and write its
files, each well-formed (Table 1's six rows and their metrics, the faithfulness measures, each explanation's
figure, page and per-frame JSON), and the explanations must find the planted visual cue better than chance
would. At this size the test split holds 2 videos and 3 epochs teach the models little, so Table 1's numbers
are only checked for form (the default-size demo's are in benchmarks/RESULTS.md).
Then ``popjax explain`` (a fresh process, every local device) on a test row must reproduce the demo's own
explanation of that row, and the in-process ``Explainer`` on one device must agree with both: the frames
split over the devices change nothing but the speed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import REPO

pytestmark = pytest.mark.slow   # the demo in a subprocess (minutes), then the popjax CLI

PAPER_ROWS = ("video_mean", "video_attention", "headline_lstm", "headline_attention", "multimodal",
              "multimodal_attention")
VARIANTS = PAPER_ROWS + ("gbdt",)   # and the gradient-boosted-trees baseline
SEEDS = [0]          # --config.train.num_seeds=1 from config.train.first_seed = 0
EXPLAINED = 2        # --config.demo.explain_examples=2


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo") / "run"
    cmd = [sys.executable, "train.py", "--workdir", str(workdir), "--config.demo.num_videos=40",
           "--config.demo.explain_examples=2", "--config.search.num_trials=0",
           "--config.train.num_seeds=1", "--config.train.num_epochs=3", "--config.progress=False"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, proc.stdout


def test_every_stage_writes_its_outputs(demo):
    W, stdout = demo
    assert json.loads((W / "timings.json").read_text()).keys() == {"corpus", "features", "table1", "explanations"}
    table = json.loads((W / "table1.json").read_text())
    assert [r["variant"] for r in table["rows"]] == list(VARIANTS)
    for v in VARIANTS:
        metrics = json.loads((W / v / "metrics.json").read_text())
        assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert (W / "table1.md").read_text().count("\n| ") == 1 + len(VARIANTS)   # separator + one line per row
    faith = json.loads((W / "faithfulness.json").read_text())
    for k in ("pointing_game", "frame_attention_hit", "word_attention_hit", "deletion_top", "deletion_random"):
        assert faith[k] is None or 0.0 <= faith[k] <= 1.0, k
    assert "NOT ImageNet-pretrained" in faith["backbone"]
    # The run kept its compiled programs for the next one (conftest points POPJAX_CACHE_DIR at a temp dir).
    assert any(p.is_file() for p in Path(os.environ["POPJAX_CACHE_DIR"]).rglob("*"))
    figures = sorted((W / "explanations").glob("*/figure.png"))
    assert len(figures) == 2 and str(figures[0]) in stdout
    for fig in figures:
        assert Image.open(fig).size[0] >= 800
        assert {p.name for p in fig.parent.iterdir()} == {"figure.png", "headline.html", "explanation.json"}


def _truth(W):
    return {r["id"]: r for r in map(json.loads, (W / "demo" / "truth.jsonl").read_text().splitlines())}


def _test_rows(W):
    from popjax.data.manifest import read_manifest

    return [r for r in read_manifest(W / "demo" / "manifest.csv").rows if r.split == "test"]


def test_table1_rows_and_metrics(demo):
    W, stdout = demo
    from popjax.data import dataset
    from popjax.experiment import format_table1

    table = json.loads((W / "table1.json").read_text())
    assert (W / "table1.md").read_text() == format_table1(table) and format_table1(table) in stdout
    assert set(table["paper"]) == set(PAPER_ROWS) and table["reference"] == "video_mean"
    assert (W / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for v, p in table["paper"].items():
        assert 0.0 < p["accuracy"] < 1.0 and -1.0 <= p["spearman"] <= 1.0, v
    labels = dataset.load_split(W / "features", "test")["label"]
    assert 0 < labels.sum() < len(labels)
    for row in table["rows"]:
        v = row["variant"]
        m = json.loads((W / v / "metrics.json").read_text())
        assert row["seeds"] == len(SEEDS) and m["seeds"]["seed"] == SEEDS and m["selected_seed"] in SEEDS, v
        for key in ("accuracy", "spearman", "accuracy_std", "spearman_std"):
            assert np.isfinite(row[key]), (v, key)
        assert 0.0 <= row["accuracy"] <= 1.0 and -1.0 <= row["spearman"] <= 1.0, row
        assert row["accuracy_std"] == row["spearman_std"] == 0.0, row        # one seed
        assert row["accuracy"] == m["seeds"]["test_accuracy_mean"] == m["test"]["accuracy"], v
        assert row["spearman"] == m["seeds"]["test_spearman_mean"] == m["test"]["spearman"], v
        assert m["test"]["n"] == len(labels) and m["epochs_run"] == (0 if v == "gbdt" else 3), v
        # Its 95% interval over test videos holds the row's value; each row but the reference is compared.
        low, high = row["accuracy_ci"]
        assert low <= row["accuracy"] <= high, row
        d = row["vs_reference"]["accuracy"]   # the same test videos: a paired comparison for every row
        assert d["ci"][0] <= d["diff"] <= d["ci"][1] and (v != "video_mean" or d == {"diff": 0.0, "ci": [0.0, 0.0],
                                                                                      "p_value": 1.0}), (v, d)
        p = np.load(W / v / "test_predictions.npy", allow_pickle=False)
        assert p.shape == (len(SEEDS), len(labels)), v
        assert "NOT ImageNet-pretrained" in m["backbone"], v
        # accuracy is a whole number of the test videos
        assert abs(row["accuracy"] * len(labels) - round(row["accuracy"] * len(labels))) < 1e-9, v


def test_gbdt_row_fitted_beside_the_neural_rows_equals_a_fit_alone(demo):
    # table1 fits the boosted trees in a host thread while the neural rows train: the same predictions.
    W, _ = demo
    from popjax import experiment, gbdt

    m = json.loads((W / "gbdt" / "metrics.json").read_text())
    data = experiment.load_data(W / "features", "multimodal")
    [alone] = gbdt.fit(data["splits"], data["constants"]["headline_encoder"]["word_vectors"], [m["hparams"]])
    assert np.array_equal(np.load(W / "gbdt" / "test_predictions.npy", allow_pickle=False)[0], alone["p_test"])
    assert alone["test"] == m["test"]


def test_faithfulness_beats_chance(demo):
    W, stdout = demo
    from popjax.data import dataset

    faith = json.loads((W / "faithfulness.json").read_text())
    truth, test = _truth(W), _test_rows(W)
    visual = [r for r in test if truth[r.id]["cues"]]
    worded = [r for r in test if truth[r.id]["cue_words"]]
    assert faith["videos"] == len(test) and visual
    assert faith["counts"]["visual_cue_videos"] == len(visual) and faith["counts"]["cue_word_videos"] == len(worded)
    assert faith["counts"]["cue_frames"] >= len(visual)
    assert faith["settings"] == {"split": "test", "cells": 4, "random_draws": 2, "pointing_tolerance_px": 15,
                                 "target": "popular"}
    for k in ("pointing_game", "frame_attention_hit", "word_attention_hit", "deletion_top", "deletion_random"):
        if k == "word_attention_hit" and not worded:        # no test video has a cue word at this size
            assert faith[k] is None and '"word_attention_hit": null' in stdout
            continue
        assert faith[k] is not None and 0.0 <= faith[k] <= 1.0, (k, faith[k])
        assert f'"{k}": {faith[k]}' in stdout, k
    S, span = 224, dataset.read_metadata(W / "features")["seconds"]
    # Chance: a uniformly random point of the frame inside the cue's box (+ the 15-px tolerance) ...
    areas = []
    for r in visual:
        x0, y0, x1, y1 = (np.clip(np.array(truth[r.id]["cues"][0]["box"]) * S + [-15, -15, 15, 15], 0, S))
        areas.append((x1 - x0) * (y1 - y0) / S**2)
    assert faith["pointing_game"] > max(areas), (faith["pointing_game"], areas)
    # ... a random frame showing the cue (shown for 25-40 % of the sampled span) ...
    shown = [(c["t1"] - c["t0"]) / span for r in visual for c in truth[r.id]["cues"]]
    assert max(shown) <= 0.41 and faith["frame_attention_hit"] > max(shown), (faith["frame_attention_hit"], shown)
    # ... a random word of the headline being its cue word.
    if worded:
        assert faith["word_attention_hit"] > max(1 / len(r.headline.split()) for r in worded)


def test_explanation_files(demo):
    W, stdout = demo
    from popjax.data import dataset
    from popjax.explain import faithfulness, render

    truth = _truth(W)
    test = _test_rows(W)
    headlines = {r.id: r.headline for r in test}
    meta = dataset.read_metadata(W / "features")
    N, S = meta["num_frames"], meta["image_size"]
    # The test videos the demo explains: one with both cues, one with the visual cue only, then ones without.
    both = [r.id for r in test if truth[r.id]["cues"] and truth[r.id]["cue_words"]][:1]
    visual_only = [r.id for r in test if truth[r.id]["cues"] and not truth[r.id]["cue_words"]][:1]
    plain = [r.id for r in test if not truth[r.id]["cues"]]
    want = (both + visual_only + plain)[:EXPLAINED]
    dirs = sorted((W / "explanations").iterdir())
    assert len(want) == EXPLAINED and [d.name for d in dirs] == sorted(want)
    for d in dirs:
        with Image.open(d / "figure.png") as im:
            assert im.format == "PNG" and im.mode == "RGB"
            width, height = im.size
            im.verify()
        assert width >= 800 and height >= 400, (width, height)
        e = json.loads((d / "explanation.json").read_text())
        assert e["headline"] == headlines[d.name] and Path(e["video"]).name == f"{d.name}.mp4"
        assert e["target"] == "popular" and e["normalization"] == "frame" and 0.0 <= e["score"] <= 1.0
        assert e["model"] == {"modality": "multimodal", "frame_pooling": "attention", "headline_pooling": "attention"}
        assert "NOT ImageNet-pretrained" in e["backbone"]
        alpha = np.array([f["attention"] for f in e["frames"]])
        heat = np.array([f["heatmap"] for f in e["frames"]])
        times = np.array([f["timestamp"] for f in e["frames"]])
        assert len(e["frames"]) == N and heat.shape == (N, 7, 7), heat.shape
        assert np.all(alpha >= 0) and alpha.sum() == pytest.approx(1.0, abs=1e-5)
        assert heat.min() >= 0.0 and heat.max() <= 1.0
        assert all(max(map(max, f["heatmap"])) == 0.0 for f in e["frames"] if f["no_positive_evidence"])
        assert np.all(np.diff(times) > 0) and 0.0 <= times[0] and times[-1] <= meta["seconds"]
        cues = truth[d.name]["cues"]
        if cues:      # the highest-attention frame shows the planted disk, and its heatmap points at it
            top = e["frames"][int(np.argmax(alpha))]
            assert faithfulness.cue_at(truth[d.name], top["timestamp"]) is not None, (top["timestamp"], cues)
            point = render.heatmap_argmax_xy(np.array(top["heatmap"]), S)
            assert point is not None and faithfulness.in_box(point, cues[0]["box"], S), (point, cues[0]["box"])
        words = [w["word"] for w in e["words"]]
        beta = np.array([w["weight"] for w in e["words"]])
        assert e["word_weight"] == "attention beta" and words
        assert words == e["headline"].lower().split()[:len(words)]      # (at most the model's max_words)
        assert np.all(beta >= 0) and beta.sum() == pytest.approx(1.0, abs=1e-5)
        page = (d / "headline.html").read_text(encoding="utf-8")
        assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
        assert all(f">{w}</span>" in page for w in words) and "NOT ImageNet-pretrained" in page
        assert str(d / "figure.png") in stdout


def _read(path):
    e = json.loads(path.read_text())
    return (e["score"], np.array([f["attention"] for f in e["frames"]]),
            np.array([f["heatmap"] for f in e["frames"]]), [w["weight"] for w in e["words"]], e)


def test_explain_cli_and_one_device_reproduce_the_demo_explanation(demo, tmp_path):
    W, _ = demo
    row = sorted(p.name for p in (W / "explanations").iterdir())[0]
    out = tmp_path / "explain"
    proc = subprocess.run([sys.executable, "-m", "popjax.cli", "explain", "--workdir", str(W / "multimodal_attention"),
                           "--manifest", str(W / "demo" / "manifest.csv"), "--row", row, "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    score, alpha, heat, words, e = _read(out / "explanation.json")
    ref_score, ref_alpha, ref_heat, ref_words, ref = _read(W / "explanations" / row / "explanation.json")
    assert e["headline"] == ref["headline"] and len(e["frames"]) == 18 and heat.shape == (18, 7, 7)
    np.testing.assert_allclose(alpha.sum(), 1.0, rtol=1e-5)
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    np.testing.assert_allclose(score, ref_score, atol=1e-5)
    np.testing.assert_allclose(alpha, ref_alpha, atol=1e-5)
    np.testing.assert_allclose(heat, ref_heat, atol=1e-3)      # heatmaps are stored rounded to 1e-5
    np.testing.assert_allclose(words, ref_words, atol=1e-5)

    # In this (pytest) process JAX has one CPU device: the same explanation without any frame split.
    import jax

    from popjax.explain.explanation import Explainer
    from popjax.trained import TrainedModel

    assert jax.local_device_count() == 1
    explanation, _ = Explainer(TrainedModel.load(W / "multimodal_attention")).explain_file(ref["video"], ref["headline"])
    np.testing.assert_allclose(explanation["score"], ref_score, atol=1e-5)
    np.testing.assert_allclose([f["attention"] for f in explanation["frames"]], ref_alpha, atol=1e-5)
    np.testing.assert_allclose([f["heatmap"] for f in explanation["frames"]], ref_heat, atol=1e-3)


@pytest.mark.parametrize("field, value, message", [
    ("dtype", "float16", "config.demo.dtype = 'float16': expected one of"),
    ("image_size", 16, "config.demo.image_size = 16: expected 0 (the backbone's own) or 32 .. 4096 pixels"),
])
def test_bad_demo_settings_fail_before_the_corpus_is_written(tmp_path, field, value, message):
    from configs import demo as demo_config
    from popjax import workflow
    from popjax.experiment import ConfigError

    config = demo_config.get_config()
    config.demo[field] = value
    with pytest.raises(ConfigError) as raised:
        workflow.demo(config, tmp_path / "run")
    assert message in str(raised.value)
    assert not (tmp_path / "run" / "demo").exists()

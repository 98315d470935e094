"""The README's main command end to end at a tiny size, and `popjax explain` on its model.

``python train.py`` runs in a subprocess exactly as a user runs it (one JAX CPU device per core), on a
40-video demo corpus with one search trial, one seed and a few epochs: every stage must run and write its
files; the numbers are not checked here (the default-size demo's are in benchmarks/RESULTS.md).
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

VARIANTS = ("video_mean", "video_attention", "headline_lstm", "headline_attention", "multimodal",
            "multimodal_attention")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo") / "run"
    cmd = [sys.executable, "train.py", "--workdir", str(workdir), "--config.demo.num_videos=40",
           "--config.demo.explain_examples=2", "--config.search.num_trials=1", "--config.search.num_epochs=2",
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

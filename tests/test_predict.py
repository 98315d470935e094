"""``popjax predict``: a trained work directory scores a manifest of unpublished videos.

A headline model (biLSTM, last states) is trained on the SYNTHETIC features dataset of ``synthetic.py``;
its manifest's videos are dummy files (a headline model decodes no video; ``read_manifest`` only checks
that the files exist). The checks:

* P(popular) of the test rows, read back from PRED.csv, reproduce the run's test accuracy and Spearman
  (``metrics.json``): predict goes from raw headlines through the saved vocabulary to the same inputs;
* bad rows of the manifest are in PRED.errors.jsonl with their reason (exit code 1), none dropped;
  a missing work directory exits 2 naming it; views and followers are not needed.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from popjax import cli, experiment, metrics
from popjax.trained import TrainedModel
from synthetic import REPO, load_config, write_features


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    data = write_features(root / "features")
    workdir = root / "headline"
    experiment.train_and_evaluate(load_config("headline_lstm", data["features"]), workdir)
    return {**data, "workdir": workdir, "videos": data["features"] / "videos",
            "metrics": json.loads((workdir / "metrics.json").read_text())}


def write_manifest(path, rows, videos, extra_lines=()):
    """A manifest of unpublished videos: id, video (relative to the manifest), headline; no views/followers."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "video", "headline"])
        for r in rows:
            w.writerow([r["id"], os.path.relpath(videos / f"{r['id']}.mp4", path.parent), r["headline"]])
        for line in extra_lines:
            w.writerow(line)
    return path


def read_predictions(path) -> dict:
    with open(path, newline="") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def test_predictions_reproduce_the_test_metrics(trained, tmp_path, capsys):
    test = sorted((r for r in trained["examples"].values() if r["split"] == "test"), key=lambda r: r["id"])
    manifest = write_manifest(tmp_path / "unpublished.csv", test, trained["videos"])
    out = tmp_path / "PRED.csv"
    code = cli.main(["predict", "--workdir", str(trained["workdir"]), "--manifest", str(manifest),
                     "--out", str(out), "--batch-size", "8", "--quiet"])
    assert code == 0
    assert f"scored {len(test)} videos" in capsys.readouterr().out
    pred = read_predictions(out)
    assert list(pred) == [r["id"] for r in test]  # manifest order, every row
    assert (tmp_path / "PRED.errors.jsonl").read_text() == ""
    p = np.array([float(pred[r["id"]]["p_popular"]) for r in test])
    assert set(pred[r["id"]]["predicted_label"] for r in test) == {"popular", "unpopular"}
    assert all((pred[r["id"]]["predicted_label"] == "popular") == (p_i > 0.5) for r, p_i in zip(test, p))

    labels = np.array([r["label"] for r in test])
    views = np.array([r["normalized_views"] for r in test])
    want = trained["metrics"]["test"]
    assert want["n"] == len(test)
    predicted_popular = np.array([pred[r["id"]]["predicted_label"] == "popular" for r in test])
    assert np.mean(predicted_popular == labels) == want["accuracy"]
    # PRED.csv rounds P(popular) to 6 decimals: the same ranks up to near-ties.
    assert metrics.spearman(p, views) == pytest.approx(want["spearman"], abs=2e-3)

    # Unrounded, through the library: the evaluation's numbers to float precision.
    model = TrainedModel.load(trained["workdir"], batch_size=8)
    tokens, lengths, words = model.encode_headlines([r["headline"] for r in test])
    assert np.array_equal(tokens, np.stack([r["tokens"] for r in test]))  # raw text -> the dataset's ids
    assert words[0] and all(w == w.lower() for w in words[0])
    scores = np.concatenate([model.p_popular(tokens=tokens[i:i + 8], lengths=lengths[i:i + 8])
                             for i in range(0, len(test), 8)])
    np.testing.assert_allclose(scores, p, atol=1e-6)
    got = metrics.evaluate(scores, labels, views)
    assert got["accuracy"] == want["accuracy"]
    assert got["spearman"] == pytest.approx(want["spearman"], abs=1e-9)


def test_bad_rows_are_reported_and_exit_1(trained, tmp_path):
    good = sorted(trained["examples"].values(), key=lambda r: r["id"])[:5]
    videos = trained["videos"]
    bad = [["", str(videos / "v0000.mp4"), "no id here"],                  # missing_id
           [good[0]["id"], str(videos / "v0001.mp4"), "same id again"],    # duplicate_id
           ["ghost", str(videos / "ghost.mp4"), "a video that is not there"],  # missing_file
           ["novideo", "", "no video path"]]                               # missing_video_field
    manifest = write_manifest(tmp_path / "with_bad_rows.csv", good, videos, bad)
    out = tmp_path / "PRED.csv"
    code = cli.main(["predict", "--workdir", str(trained["workdir"]), "--manifest", str(manifest),
                     "--out", str(out), "--quiet"])
    assert code == 1
    assert list(read_predictions(out)) == [r["id"] for r in good]
    errors = [json.loads(line) for line in (tmp_path / "PRED.errors.jsonl").read_text().splitlines()]
    assert [(e["row"], e["reason"]) for e in errors] == [
        (6, "missing_id"), (7, "duplicate_id"), (8, "missing_file"), (9, "missing_video_field")]
    assert errors[2]["id"] == "ghost" and "ghost.mp4" in errors[2]["message"]


@pytest.mark.slow
def test_missing_workdir_exits_2(tmp_path, trained):
    manifest = write_manifest(tmp_path / "one.csv", [next(iter(trained["examples"].values()))],
                              trained["videos"])
    proc = subprocess.run([sys.executable, "-m", "popjax.cli", "predict", "--workdir", str(tmp_path / "nope"),
                           "--manifest", str(manifest), "--out", str(tmp_path / "PRED.csv")],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 2, proc.stderr
    assert f"{tmp_path / 'nope'}: no trained model" in proc.stderr
    assert not (tmp_path / "PRED.csv").exists()

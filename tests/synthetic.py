"""A small, learnable, SYNTHETIC features dataset for the training/predict tests (no video decoding).

``write_features(root)`` writes what ``popjax extract`` leaves in its output directory, minus the backbone
(headline models and training never read it): the TFDS dataset (``dataset.write_dataset``),
``vocab.json`` (``text.Vocabulary``) and ``word_vectors.npy``, plus ``manifest.csv`` with one tiny
dummy file per video so that ``read_manifest`` accepts its rows (predict on headline models decodes
no video).

The label is learnable from either modality: normalised views grow with a visual cue (larger values in
64 feature channels in 2 consecutive frames of 6) and with a cue word in the headline; popular = above the
training median, as in ``popjax extract``.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import socket
import sys
from pathlib import Path

import numpy as np

from popjax.data import dataset, text
from popjax.data.manifest import assign_split

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # configs/ (the config files import each other as a package)

# Small models and a short schedule: seconds per run on 2 cores. Batch 16 splits over 1, 2 and 4 devices.
# Every test trains at configs/default.py's ``runlocal`` size.
SMALL = {"progress": False}

NUM_FRAMES = 6
FEATURE_DIM = 2048
MAX_WORDS = 8
WORD_DIM = 8
CUE_CHANNELS = slice(0, 64)
CUE_WORD = "puppy"
NEUTRAL = ["city", "news", "today", "weekend", "recipe", "team", "music", "travel", "best", "ever"]


def headline_for(rng, cue: bool) -> str:
    words = list(rng.choice(NEUTRAL, size=int(rng.integers(2, 6)), replace=False))
    if cue:
        words.insert(int(rng.integers(len(words) + 1)), CUE_WORD)
    return " ".join(words).capitalize()


def write_features(root, num_videos: int = 200, seed: int = 0) -> dict:
    """Write the dataset under ``root``; returns {"features": dir, "manifest": csv, "examples": by id}."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num_videos):
        vid = f"v{i:04d}"
        visual, word = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        features = np.abs(rng.normal(0.0, 0.5, (NUM_FRAMES, FEATURE_DIM))).astype(np.float32)
        if visual:  # the cue in 2 consecutive frames of 6
            t0 = int(rng.integers(NUM_FRAMES - 1))
            features[t0:t0 + 2, CUE_CHANNELS] += 2.0
        followers = float(rng.integers(1000, 5000))
        normalized = float(np.exp(1.0 * visual + 1.0 * word + 0.4 * rng.normal()))
        rows.append({"id": vid, "split": assign_split(vid), "headline": headline_for(rng, word),
                     "features": features.astype(np.float16),
                     "timestamps": np.linspace(0.0, 6.0, NUM_FRAMES, endpoint=False).astype(np.float32),
                     "views": round(normalized * followers), "followers": followers})
        (root / "videos" / f"{vid}.mp4").write_bytes(b"not a real video: predict on headline models never reads it")
    for r in rows:
        r["normalized_views"] = r["views"] / r["followers"]

    words = sorted(set(NEUTRAL) | {CUE_WORD})
    vectors = text.WordVectors(words, np.random.default_rng(seed + 1).normal(size=(len(words), WORD_DIM)),
                               source="synthetic")
    tokens = {r["id"]: text.tokenize(r["headline"], MAX_WORDS, known=vectors) for r in rows}
    vocab = text.Vocabulary.build(tokens.values(), vectors)
    vocab.save(root / "vocab.json")
    np.save(root / "word_vectors.npy", vocab.embedding_matrix(vectors), allow_pickle=False)
    threshold = float(np.median([r["normalized_views"] for r in rows if r["split"] == "train"]))
    for r in rows:
        r["tokens"], r["length"] = vocab.encode(tokens[r["id"]], MAX_WORDS)
        r["label"] = int(r["normalized_views"] > threshold)

    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "video", "headline", "views", "followers"])
        for r in rows:
            w.writerow([r["id"], f"videos/{r['id']}.mp4", r["headline"], r["views"], r["followers"]])
    metadata = {
        "num_frames": NUM_FRAMES, "seconds": 6.0, "feature_dim": FEATURE_DIM, "max_words": MAX_WORDS,
        "image_size": 224, "threshold": threshold, "backbone": "SYNTHETIC features (test fixture; no backbone)",
        "backbone_dir": "backbone", "backbone_pretrained": False, "vocab": "vocab.json",
        "word_vectors": "word_vectors.npy", "word_vectors_source": "synthetic",
        "manifest": str((root / "manifest.csv").absolute())}
    dataset.write_dataset(root, rows, metadata)
    (root / "synthetic.json").write_text(json.dumps({"num_videos": num_videos, "seed": seed}))
    return {"features": root, "manifest": root / "manifest.csv", "examples": {r["id"]: r for r in rows}}


TABLE1_ROWS = ("video_mean", "video_attention", "headline_lstm", "headline_attention", "multimodal",
               "multimodal_attention", "gbdt")


def config_file(name: str) -> tuple[Path, str]:
    """(file, argument) of a config name at the ``runlocal`` size: a Table-1 row is
    ``configs/table1.py:ROW,runlocal``, the whole table ``configs/table1.py:runlocal``."""
    if name in TABLE1_ROWS:
        return REPO / "configs" / "table1.py", f"{name},runlocal"
    if name == "table1":
        return REPO / "configs" / "table1.py", "runlocal"
    raise ValueError(f"no test config {name!r}")


def load_config(name: str, features, **overrides):
    """The config ``name`` (``config_file``) with SMALL settings, ``features`` and ``overrides`` ("a.b": value)."""
    path, arg = config_file(name)
    spec = importlib.util.spec_from_file_location(f"configs.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    for key, value in {**SMALL, "data.features": str(features), **overrides}.items():
        *path, leaf = key.split(".")
        node = config
        for p in path:
            node = node[p]
        node[leaf] = value
    return config


def free_port() -> int:
    """A loopback port nobody listens on now, for a test's jax.distributed coordinator."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""Do the explanations point at the planted cause? Checked on the synthetic demo corpus (``truth.jsonl``).

* ``pointing_game``: over frames that show the planted object, the fraction whose heatmap maximum
  (upsampled with the network's geometry) falls inside the object's box, with the usual 15-pixel
  tolerance of the pointing game at 224 x 224 (Zhang et al., 2016), scaled with the backbone's input size;
* ``frame_attention_hit``: over videos with the visual cue, the fraction whose highest-alpha frame shows it;
* ``word_attention_hit``: over videos with a cue word, the fraction whose highest-weight word is a cue word;
* deletion: over videos with the visual cue, mean P(popular) after greying out, in every frame, the
  ``cells`` heatmap cells with the most evidence (``deletion_top``) versus as many random cells
  (``deletion_random``, averaged over draws); top deletion should lower the score more.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from popjax.data import manifest as manifest_lib
from popjax.data.video import VideoError
from popjax.explain import render
from popjax.explain.explanation import Explainer

POINTING_TOLERANCE = 15  # pixels at 224 x 224 (``in_box`` scales it with the input size)


def read_truth(path) -> dict[str, dict]:
    return {r["id"]: r for r in (json.loads(line) for line in Path(path).read_text().splitlines() if line.strip())}


def cue_at(record: dict, t: float) -> list | None:
    """The box of the cue shown at time ``t`` (seconds), if any."""
    for cue in record.get("cues", []):
        if cue["t0"] <= t < cue["t1"]:
            return cue["box"]
    return None


def pointing_tolerance(size: int) -> float:
    """The pointing game's tolerance in pixels of a ``size`` x ``size`` input: 15 at 224, the same fraction of
    the frame at other sizes."""
    return POINTING_TOLERANCE * size / 224


def in_box(xy, box, size: int, tolerance: float | None = None) -> bool:
    x, y = xy
    tolerance = pointing_tolerance(size) if tolerance is None else tolerance
    x0, y0, x1, y1 = (v * size for v in box)
    return x0 - tolerance <= x <= x1 + tolerance and y0 - tolerance <= y <= y1 + tolerance


def cell_mask(cells, K: int, size: int) -> np.ndarray:
    """Pixels of the given (i, j) cells: cell (i, j) covers the pixels nearest its centre (stride*i, stride*j)."""
    stride = size / K
    nearest = np.clip(np.round(np.arange(size) / stride), 0, K - 1).astype(int)
    mask = np.zeros((size, size), bool)
    for i, j in cells:
        mask |= (nearest[:, None] == i) & (nearest[None, :] == j)
    return mask


def delete_cells(frames: np.ndarray, cells_per_frame, K: int) -> np.ndarray:
    """Grey out (frame mean colour) the given cells of each frame; frames uint8 [N, S, S, 3]."""
    out = frames.copy()
    for f, cells in zip(out, cells_per_frame):
        f[cell_mask(cells, K, f.shape[0])] = f.reshape(-1, 3).mean(0).astype(np.uint8)
    return out


def top_cells(raw: np.ndarray, m: int) -> list:
    K = raw.shape[-1]
    return [divmod(int(c), K) for c in np.argsort(-raw.ravel(), kind="stable")[:m]]


def _sample(rows, trained):
    out = []
    for r in rows:
        try:
            out.append((r, trained.sample_frames(r.video)))
        except VideoError:
            continue
    return out


def _chunks(items, n):
    return [items[i:i + n] for i in range(0, len(items), n)]


def evaluate(explainer: Explainer, manifest_path, truth_path, split: str = "test", cells: int = 4,
             random_draws: int = 2, seed: int = 0) -> dict:
    """The four measures above on ``split`` of the demo corpus (video + headline attention model).

    Heatmaps are read only for the videos that show the visual cue; the others are run for their word
    attention, and the occluded copies of the deletion test for their scores. Every pass runs the one Grad-CAM
    program: its backward pass stops at the last convolution, so a forward-only program would do little less
    work and cost a second ResNet50 compilation."""
    trained = explainer.trained
    truth = read_truth(truth_path)
    rows = [r for r in manifest_lib.read_manifest(manifest_path).rows if r.split == split]
    rng = np.random.default_rng(seed)
    size = trained.backbone.metadata["image_size"]
    B = explainer.batch
    visual = [r for r in rows if truth.get(r.id, {}).get("cues")]
    words_only = [r for r in rows if truth.get(r.id, {}).get("cue_words") and r not in visual]
    pointing, frame_hits, word_hits, top_scores = [], [], [], []
    random_scores = [[] for _ in range(random_draws)]

    def word_hit(out, b, record):
        if out.get("beta") is not None and out["words"][b]:
            words = out["words"][b]
            word_hits.append(words[int(np.argmax(out["beta"][b][:len(words)]))] in set(record["cue_words"]))

    for chunk in _chunks(visual, B):
        batch = _sample(chunk, trained)
        if not batch:
            continue
        heads = [r.headline for r, _ in batch]
        out = explainer.arrays(np.stack([s.frames for _, s in batch]), heads)
        K = out["raw"].shape[-1]
        deleted_top, deleted_random = [], [[] for _ in range(random_draws)]
        for b, (row, sampled) in enumerate(batch):
            record = truth[row.id]
            shows = [cue_at(record, t) for t in sampled.timestamps]
            for i, box in enumerate(shows):
                if box is not None:
                    point = render.heatmap_argmax_xy(out["raw"][b, i], size)
                    pointing.append(point is not None and in_box(point, box, size))
            frame_hits.append(shows[int(np.argmax(out["alpha"][b]))] is not None)
            if record.get("cue_words"):
                word_hit(out, b, record)
            deleted_top.append(delete_cells(sampled.frames, [top_cells(h, cells) for h in out["raw"][b]], K))
            for d in range(random_draws):
                deleted_random[d].append(delete_cells(sampled.frames, [
                    [divmod(int(c), K) for c in rng.choice(K * K, cells, replace=False)] for _ in shows], K))
        top_scores += list(explainer.arrays(np.stack(deleted_top), heads)["score"])
        for d in range(random_draws):
            random_scores[d] += list(explainer.arrays(np.stack(deleted_random[d]), heads)["score"])
    for chunk in _chunks(words_only, B):
        batch = _sample(chunk, trained)
        if batch:
            out = explainer.arrays(np.stack([s.frames for _, s in batch]), [r.headline for r, _ in batch])
            for b, (row, _) in enumerate(batch):
                word_hit(out, b, truth[row.id])
    mean = lambda v: float(np.mean(v)) if len(v) else None  # noqa: E731
    return {"pointing_game": mean(pointing), "frame_attention_hit": mean(frame_hits),
            "word_attention_hit": mean(word_hits), "deletion_top": mean(top_scores),
            "deletion_random": mean(np.mean(random_scores, axis=0)) if top_scores else None, "videos": len(rows),
            "counts": {"cue_frames": len(pointing), "visual_cue_videos": len(frame_hits),
                       "cue_word_videos": len(word_hits)},
            "settings": {"split": split, "cells": cells, "random_draws": random_draws,
                         "pointing_tolerance_px": pointing_tolerance(size), "target": explainer.target},
            "backbone": trained.backbone.description}

"""Do the explanations point at the planted cause? Checked on the synthetic demo corpus (``truth.jsonl``).

* ``pointing_game``: over frames that show the planted object, the fraction whose heatmap maximum
  (upsampled with the network's geometry) falls inside the object's box, with the usual 15-pixel
  tolerance of the pointing game (Zhang et al., 2016);
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
from popjax.data.video import VideoError, sample_frames
from popjax.explain import render
from popjax.explain.explanation import Explainer

POINTING_TOLERANCE = 15  # pixels at 224 x 224


def read_truth(path) -> dict[str, dict]:
    return {r["id"]: r for r in (json.loads(line) for line in Path(path).read_text().splitlines() if line.strip())}


def cue_at(record: dict, t: float) -> list | None:
    """The box of the cue shown at time ``t`` (seconds), if any."""
    for cue in record.get("cues", []):
        if cue["t0"] <= t < cue["t1"]:
            return cue["box"]
    return None


def in_box(xy, box, size: int, tolerance: float = POINTING_TOLERANCE) -> bool:
    x, y = xy
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


def evaluate(explainer: Explainer, manifest_path, truth_path, split: str = "test", cells: int = 4,
             random_draws: int = 3, seed: int = 0, batch_videos: int = 4) -> dict:
    """The four measures above on ``split`` of the demo corpus (video + headline attention model)."""
    trained = explainer.trained
    truth = read_truth(truth_path)
    rows = [r for r in manifest_lib.read_manifest(manifest_path).rows if r.split == split]
    rng = np.random.default_rng(seed)
    size = trained.backbone.metadata["image_size"]
    pointing, frame_hits, word_hits, top_scores, random_scores = [], [], [], [], []
    for start in range(0, len(rows), batch_videos):
        batch = []
        for r in rows[start:start + batch_videos]:
            try:
                batch.append((r, sample_frames(r.video, trained.settings.num_frames, trained.settings.seconds, size)))
            except VideoError:
                continue
        if not batch:
            continue
        frames = np.stack([s.frames for _, s in batch])
        headlines = [r.headline for r, _ in batch]
        out = explainer.arrays(frames, headlines)
        K = out["raw"].shape[-1]
        deleted_top, deleted_random, cue_videos = [], [], []
        for b, (row, sampled) in enumerate(batch):
            record = truth.get(row.id, {})
            shows = [cue_at(record, t) for t in sampled.timestamps]
            for i, box in enumerate(shows):
                if box is not None:
                    pointing.append(bool(out["positive"][b, i]) and
                                    in_box(render.heatmap_argmax_xy(out["raw"][b, i], size), box, size))
            if any(box is not None for box in shows):
                frame_hits.append(shows[int(np.argmax(out["alpha"][b]))] is not None)
                cue_videos.append(b)
                deleted_top.append(delete_cells(sampled.frames, [top_cells(h, cells) for h in out["raw"][b]], K))
                deleted_random.append([delete_cells(sampled.frames, [
                    [divmod(int(c), K) for c in rng.choice(K * K, cells, replace=False)] for _ in range(len(shows))], K)
                    for _ in range(random_draws)])
            cue_words = set(record.get("cue_words", []))
            weights = out.get("beta")
            if cue_words and weights is not None and out["words"][b]:
                words = out["words"][b]
                word_hits.append(words[int(np.argmax(weights[b][:len(words)]))] in cue_words)
        if cue_videos:
            heads = [headlines[b] for b in cue_videos]
            top_scores += list(explainer.arrays(np.stack(deleted_top), heads)["score"])
            for d in range(random_draws):
                random_scores.append(explainer.arrays(np.stack([r[d] for r in deleted_random]), heads)["score"])
    rand = np.mean(np.stack(random_scores), axis=0) if random_scores else np.zeros(0)
    mean = lambda v: float(np.mean(v)) if len(v) else None  # noqa: E731
    return {"pointing_game": mean(pointing), "frame_attention_hit": mean(frame_hits),
            "word_attention_hit": mean(word_hits), "deletion_top": mean(top_scores),
            "deletion_random": mean(rand), "videos": len(rows),
            "counts": {"cue_frames": len(pointing), "visual_cue_videos": len(frame_hits),
                       "cue_word_videos": len(word_hits)},
            "settings": {"split": split, "cells": cells, "random_draws": random_draws,
                         "pointing_tolerance_px": POINTING_TOLERANCE, "target": explainer.target},
            "backbone": trained.backbone.description}

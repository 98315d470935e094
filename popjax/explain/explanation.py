"""Explanations of a trained model for one video + headline (``popjax explain``).

``explanation.json``: ``score`` = P(popular); per frame its timestamp, attention alpha_i and
K x K Grad-CAM heatmap after attention scaling; per word its weight (beta_t, or gradient x input for the
last-state baseline); and how the backbone was initialised. ``figure.png`` and ``headline.html`` draw it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from popjax import files, parallel
from popjax.explain import render
from popjax.explain.gradcam import make_explainer
from popjax.trained import TrainedModel


class Explainer:
    """Grad-CAM + attention explanations of a ``TrainedModel`` (jit-compiled, batched over videos)."""

    def __init__(self, trained: TrainedModel, target: str = "popular", normalization: str = "frame",
                 batch: int = 1):
        self.trained, self.target, self.normalization, self.batch = trained, target, normalization, batch
        bb = trained.backbone
        self._fns = {g: make_explainer(bb.model if bb else None, bb.preprocess if bb else None, trained.model,
                                       target=target, normalization=normalization, gradients=g)
                     for g in (True, False)}

    def arrays(self, frames: np.ndarray | None, headlines: Sequence[str], gradients: bool = True) -> dict:
        """Outputs of ``gradcam.make_explainer`` for frames uint8 [B, N, S, S, 3] and B headlines.

        Batches smaller than ``self.batch`` are padded (repeating the last video), so that every batch
        reuses one compiled program; ``gradients=False`` runs the forward pass only."""
        n = len(headlines)
        headlines = list(headlines) + [headlines[-1]] * max(0, self.batch - n)
        tokens = lengths = words = None
        if self.trained.vocab is not None:
            tokens, lengths, words = self.trained.encode_headlines(headlines)
        bb_vars = self.trained.backbone.inference_variables if self.trained.backbone else None
        if frames is not None:
            frames = np.asarray(frames)
            frames = np.concatenate([frames, np.repeat(frames[-1:], len(headlines) - n, axis=0)])
            # Frames split over the backbone's devices (videos, else the frames of a video): each device
            # computes its share instead of all of them computing everything.
            frames = jax.device_put(frames, parallel.split_sharding(self.trained.backbone.mesh, frames.shape, (0, 1)))
        out = self._fns[gradients](bb_vars, self.trained.variables, frames, tokens, lengths)
        out = {k: np.asarray(v)[:n] for k, v in out.items()}
        out["words"] = None if words is None else words[:n]
        return out

    def explain(self, frames: np.ndarray | None, timestamps, headline: str) -> dict:
        """The ``explanation.json`` dict of one video."""
        out = self.arrays(None if frames is None else frames[None], [headline])
        return to_json(out, 0, timestamps, headline, self.trained, self.target, self.normalization)

    def explain_file(self, video, headline: str) -> tuple[dict, np.ndarray | None]:
        return self.explain_files([video], [headline])[0]

    def explain_files(self, videos: Sequence, headlines: Sequence[str]) -> list[tuple[dict, np.ndarray | None]]:
        """(explanation.json dict, frames) of each video file with its headline, ``self.batch`` videos per call."""
        results = []
        for start in range(0, len(videos), self.batch):
            chunk, heads = list(videos[start:start + self.batch]), list(headlines[start:start + self.batch])
            frames, timestamps = None, [None] * len(chunk)
            if self.trained.uses_video:
                sampled = [self.trained.sample_frames(v) for v in chunk]
                frames, timestamps = np.stack([s.frames for s in sampled]), [s.timestamps for s in sampled]
            out = self.arrays(frames, heads)
            for b, (video, headline) in enumerate(zip(chunk, heads)):
                explanation = to_json(out, b, timestamps[b], headline, self.trained, self.target, self.normalization)
                explanation["video"] = str(video)
                results.append((explanation, None if frames is None else frames[b]))
        return results


def to_json(out: dict, b: int, timestamps, headline: str, trained: TrainedModel, target: str,
            normalization: str) -> dict:
    """Video ``b`` of an ``Explainer.arrays`` batch, in the explanation.json layout."""
    explanation = {"score": float(out["score"][b]), "target": target, "normalization": normalization,
                   "headline": headline, "frames": [], "words": [],
                   "backbone": trained.backbone.description if trained.backbone else "none (headline model)",
                   "model": {k: trained.info["static"][k] for k in ("modality", "frame_pooling", "headline_pooling")}}
    if "heatmaps" in out:
        for i, ts in enumerate(timestamps):
            explanation["frames"].append({
                "timestamp": float(ts), "attention": float(out["alpha"][b, i]),
                "heatmap": np.round(out["heatmaps"][b, i], 5).tolist(),
                "no_positive_evidence": not bool(out["positive"][b, i])})
    if out.get("words") is not None:
        weights = out["beta"][b] if "beta" in out else out["word_scores"][b]
        explanation["word_weight"] = "attention beta" if "beta" in out else "gradient x input"
        explanation["words"] = [{"word": w, "weight": float(weights[t])} for t, w in enumerate(out["words"][b])]
    return explanation


def write_explanation(explanation: dict, frames: np.ndarray | None, out_dir) -> dict:
    """``figure.png``, ``headline.html`` and ``explanation.json`` under ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "explanation.json", "figure": out_dir / "figure.png",
             "headline": out_dir / "headline.html"}
    render.save_headline_html(explanation, paths["headline"])
    if frames is not None:
        render.save_figure(explanation, frames, paths["figure"])
    else:
        paths.pop("figure")
    files.write_json(paths["json"], explanation, indent=1)
    return {k: str(v) for k, v in paths.items()}

"""Scoring unpublished videos with a trained model (``popjax predict``).

A trained work directory knows its features dataset, and so the backbone, the frame sampling settings and
the vocabulary the model was trained with; new videos go through exactly the same path as in
``popjax extract`` (features rounded to float16 as stored there), so predictions on already-seen videos
reproduce the evaluation.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from popjax import files, parallel
from popjax.backbone import Backbone
from popjax.data import dataset, manifest as manifest_lib
from popjax.data.text import Vocabulary
from popjax.experiment import load_model
from popjax.extract import Settings, featurize, frames_per_call, video_error, write_errors


@dataclasses.dataclass
class TrainedModel:
    """A trained popularity model with everything needed to turn raw inputs into its inputs."""

    model: Any
    variables: dict
    info: dict
    backbone: Backbone | None
    vocab: Vocabulary | None
    settings: Settings
    batch_size: int = 32

    def __post_init__(self):
        self.mesh = parallel.local_mesh()
        self.batch_size = parallel.round_up(self.batch_size, self.mesh.size)
        model = self.model
        self._scores = jax.jit(lambda v, b: jax.nn.softmax(model.apply(v, b))[:, 1])

    @classmethod
    def load(cls, workdir, batch_size: int = 32, dtype="float32", decoder: str = "cpu") -> "TrainedModel":
        model, variables, info = load_model(workdir)
        features_dir = Path(info["features"])
        meta = dataset.read_metadata(features_dir)
        settings = Settings(num_frames=meta["num_frames"], seconds=meta["seconds"], max_words=meta["max_words"],
                            decoder=decoder)
        backbone = None
        if model.video_encoder is not None:
            backbone = Backbone.load(features_dir / meta["backbone_dir"], dtype=dtype,
                                     batch_size=frames_per_call(batch_size, settings.num_frames))
        vocab = Vocabulary.load(features_dir / meta["vocab"]) if model.headline_encoder is not None else None
        return cls(model, variables, info, backbone, vocab, settings, batch_size)

    @property
    def uses_video(self) -> bool:
        return self.backbone is not None

    def encode_headlines(self, headlines: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """Token ids [B, T], lengths [B] and the tokens themselves (for word-level explanations)."""
        T = self.settings.max_words
        tokens, lengths, words = np.zeros((len(headlines), T), np.int32), np.zeros(len(headlines), np.int32), []
        for i, h in enumerate(headlines):
            ids, n, toks = self.vocab.encode_headline(h, T)
            tokens[i], lengths[i] = ids, n
            words.append(list(toks[:n]))
        return tokens, lengths, words

    def p_popular(self, features=None, tokens=None, lengths=None) -> np.ndarray:
        """P(popular) for up to ``batch_size`` videos; ``features`` [B, N, 2048] are rounded to float16 as in
        the dataset. Padded to a static batch, split over this process's devices."""
        batch = {}
        if self.uses_video:
            batch["features"] = np.asarray(features, np.float16).astype(np.float32)
        if self.vocab is not None:
            batch["tokens"], batch["lengths"] = np.asarray(tokens, np.int32), np.asarray(lengths, np.int32)
        n = len(next(iter(batch.values())))
        sharding = parallel.batch_sharding(self.mesh)
        batch = {k: jax.device_put(parallel.pad_batch(v, self.batch_size), sharding) for k, v in batch.items()}
        return np.asarray(self._scores(self.variables, batch))[:n]


def predict_manifest(workdir, manifest_path, out_csv, *, batch_size: int = 32, dtype="float32",
                     decoder: str = "cpu", progress: bool = True) -> dict:
    """Score every good row of a manifest (views and followers not needed) into ``out_csv``
    (id, p_popular, predicted_label); rejected rows go to ``<out>.errors.jsonl``. Returns counts."""
    trained = TrainedModel.load(workdir, batch_size=batch_size, dtype=dtype, decoder=decoder)
    result = manifest_lib.read_manifest(manifest_path, require_labels=False)
    rows, video_errors = result.rows, []
    if trained.uses_video:
        from tqdm.auto import tqdm

        items = list(tqdm(featurize(rows, trained.backbone, trained.settings), total=len(rows), unit="video",
                          desc="predict", disable=not progress))
        position = {r.id: k for k, r in enumerate(rows)}
        items.sort(key=lambda it: position[it.row.id])   # featurize yields batch by batch: back to manifest order
        video_errors = [video_error(it.row, it.error) for it in items if it.error is not None]
        items = [it for it in items if it.error is None]
        rows = [it.row for it in items]
        features = np.stack([it.features for it in items]) if items else np.zeros((0, 1, 2048))
    scores = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        tokens = lengths = None
        if trained.vocab is not None:
            tokens, lengths, _ = trained.encode_headlines([r.headline for r in chunk])
        scores.append(trained.p_popular(features[start:start + batch_size] if trained.uses_video else None,
                                        tokens, lengths))
    p = np.concatenate(scores) if scores else np.zeros(0)
    out_csv = Path(out_csv)
    files.write_csv(out_csv, [["id", "p_popular", "predicted_label"]] + [
        [row.id, f"{score:.6f}", "popular" if score > 0.5 else "unpopular"] for row, score in zip(rows, p)])
    errors = write_errors(errors_path(out_csv), result, video_errors)
    return {"scored": len(rows), "failed": len(errors), "out": str(out_csv), "errors": str(errors_path(out_csv))}


def errors_path(out_csv: Path) -> Path:
    return out_csv.with_name(out_csv.stem + ".errors.jsonl")

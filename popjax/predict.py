"""Scoring unpublished videos with a trained model (``popjax predict``).

A trained work directory knows its features dataset, and so the backbone, the frame sampling settings and
the vocabulary the model was trained with; new videos go through exactly the same path as in
``popjax extract`` (features rounded to float16 as stored there), so predictions on already-seen videos
reproduce the evaluation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from popjax import files
from popjax.data import manifest as manifest_lib
from popjax.extract import featurize, video_error, write_errors
from popjax.trained import TrainedModel


def predict_manifest(workdir, manifest_path, out_csv, *, batch_size: int = 32, dtype=None,
                     decoder: str = "cpu", progress: bool = True) -> dict:
    """Score every good row of a manifest (views and followers not needed) into ``out_csv``
    (id, p_popular, predicted_label); rejected rows go to ``<out>.errors.jsonl``. ``dtype``: the backbone's
    (default: that of the model's features). Returns counts."""
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

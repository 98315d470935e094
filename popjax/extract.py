"""``popjax extract``: a manifest of videos and headlines -> the features dataset the models train on.

Per video: the N = 18 frames of the first 6 s (``data.video``), their ResNet50 features x_i (``Backbone``),
the headline's tokens (``data.text``) and the label (``data.manifest``). Frames are decoded by a pool of
threads (each drives one ffmpeg process, so decoding runs outside the GIL) while the main thread runs the
jit-compiled, batched backbone on all local devices. With several processes (``jax.distributed``) each
takes its own shard of the manifest and process 0 assembles the dataset.

The work directory is resumable: finished videos sit in ``cache/`` chunks (written atomically) and are not
redone; the backbone used is saved in ``backbone/`` so a resumed run, ``predict`` and ``explain`` use
exactly the same one. Every rejected row goes to ``errors.jsonl`` with its reason; ``report.json`` has the
counts and the throughput.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import jax
import numpy as np

from popjax import files
from popjax.backbone import Backbone
from popjax.data import dataset, manifest as manifest_lib, text as text_lib
from popjax.data.video import VideoError, sample_frames
from popjax.weights import load_backbone, save_backbone

DEMO_RESIDUAL_SCALE = 0.2   # see PROBES.md and the closing note of the data issue
CALIBRATION_FRAMES = 64


class ExtractError(RuntimeError):
    """No dataset can be built (no decodable video, or no extracted training row for the threshold).

    ``errors.jsonl`` is still written first, so every rejected row keeps its reason.
    """


@dataclasses.dataclass(frozen=True)
class Settings:
    num_frames: int = 18       # N (paper)
    seconds: float = 6.0       # the first 6 s (paper)
    max_words: int = 32
    workers: int = 0           # decoding threads; 0 = one per core
    chunk_videos: int = 64     # videos per cache file


@dataclasses.dataclass
class Featurized:
    row: manifest_lib.Row
    frames: np.ndarray | None = None       # uint8 [N, S, S, 3] until encoded
    features: np.ndarray | None = None     # float32 [N, 2048]
    timestamps: np.ndarray | None = None
    error: VideoError | None = None
    call: int = -1                         # the backbone call that encoded it (0: the first, which compiles)


# --------------------------------------------------------------------------------------------- core
def frames_per_call(batch_size: int, num_frames: int) -> int:
    """A backbone batch that holds whole videos (``batch_size`` frames, rounded to a multiple of N)."""
    return max(1, round(batch_size / num_frames)) * num_frames


def featurize(rows: Iterable[manifest_lib.Row], backbone: Backbone, settings: Settings = Settings()
              ) -> Iterator[Featurized]:
    """Decode and encode ``rows``, overlapping ffmpeg decoding (threads) with backbone batches of
    ``backbone.batch_size // N`` whole videos (make ``batch_size`` a multiple of N: ``frames_per_call``)."""
    workers = settings.workers or os.cpu_count() or 1
    size = backbone.metadata["image_size"]
    rows = iter(rows)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: collections.deque = collections.deque()

        def submit():
            row = next(rows, None)
            if row is not None:
                pending.append((row, pool.submit(sample_frames, row.video, settings.num_frames,
                                                 settings.seconds, size)))

        batch_videos = max(1, backbone.batch_size // settings.num_frames)
        for _ in range(workers + 2 * batch_videos):  # bounded read-ahead
            submit()
        batch: list[Featurized] = []
        calls = 0
        while pending:
            row, future = pending.popleft()
            submit()
            try:
                sampled = future.result()
            except VideoError as e:
                yield Featurized(row, error=e)
                continue
            batch.append(Featurized(row, frames=sampled.frames, timestamps=sampled.timestamps))
            if len(batch) == batch_videos:
                yield from _encode(batch, backbone, calls)
                batch, calls = [], calls + 1
        if batch:
            yield from _encode(batch, backbone, calls)


def _encode(batch: list[Featurized], backbone: Backbone, call: int) -> list[Featurized]:
    features = backbone.features(np.concatenate([b.frames for b in batch]))
    for item, f in zip(batch, np.split(features, len(batch))):
        item.features, item.frames, item.call = f, None, call
    return batch


# ------------------------------------------------------------------------------------------ backbone
def prepare_backbone(out: Path, rows, weights=None, seed: int = 0, settings: Settings = Settings(),
                     **backbone_kwargs) -> Backbone:
    """The backbone of this extraction, saved in ``out/backbone`` the first time and reused after.

    With ``weights`` (a ``convert-weights`` directory) that backbone; otherwise a random ResNet50 with
    residual scale 0.2 whose BatchNorm statistics are re-estimated on the first frames of the training
    split (``Backbone.calibrate``).
    """
    target = out / "backbone"
    if jax.process_index() == 0 and not (target / "metadata").is_dir():
        if weights:
            variables, metadata = load_backbone(weights)
            metadata["path"] = str(Path(weights).absolute())
        else:
            backbone = Backbone.random(seed, residual_scale_init=DEMO_RESIDUAL_SCALE, **backbone_kwargs)
            backbone = backbone.calibrate(_calibration_frames(rows, settings, backbone))
            variables, metadata = jax.device_get(backbone.variables), backbone.metadata
        tmp = out / ".backbone.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_backbone(tmp, variables, metadata)
        os.replace(tmp, target)
    _sync("backbone")
    return Backbone.load(target, **backbone_kwargs)


def _calibration_frames(rows, settings: Settings, backbone: Backbone) -> np.ndarray:
    # Training rows (by id); the others only if no training video decodes, so that the run still gets
    # to record every row's error (it then stops in _assemble: no training row, no threshold).
    train = sorted((r for r in rows if r.split == "train"), key=lambda r: r.id)
    others = sorted((r for r in rows if r.split != "train"), key=lambda r: r.id)
    frames, failed = [], []
    for group in (train, others):
        for row in group:
            try:
                frames.append(sample_frames(row.video, settings.num_frames, settings.seconds,
                                            backbone.metadata["image_size"]).frames)
            except VideoError as e:
                failed.append(video_error(row, e))
                continue
            if sum(len(f) for f in frames) >= CALIBRATION_FRAMES:
                break
        if frames:
            break
    if not frames:   # then every row was tried and failed: ``failed`` is the complete list
        raise _NoVideo(failed)
    return np.concatenate(frames)[:CALIBRATION_FRAMES]


class _NoVideo(Exception):
    def __init__(self, video_errors: list[dict]):
        super().__init__("no video of the manifest could be decoded")
        self.video_errors = video_errors


# ------------------------------------------------------------------------------------------- extract
def extract(manifest_path, out, *, weights=None, batch_size: int = 32, glove: str | None = None,
            settings: Settings = Settings(), seed: int = 0, progress: bool = True, dtype="float32") -> dict:
    """Run (or resume) an extraction; returns the report (also in ``out/report.json``)."""
    t0 = time.time()
    out = Path(out)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    result = manifest_lib.read_manifest(manifest_path)
    rows = sorted(result.rows, key=lambda r: r.id)
    try:
        backbone = prepare_backbone(out, rows, weights, seed, settings, dtype=dtype,
                                    batch_size=frames_per_call(batch_size, settings.num_frames))
    except _NoVideo as e:
        write_errors(out / "errors.jsonl", result, e.video_errors)
        raise ExtractError(f"{manifest_path}: no decodable video among its {len(rows)} accepted rows "
                           f"(reasons in {out / 'errors.jsonl'}); no dataset written") from None

    pid, nproc = jax.process_index(), jax.process_count()
    done = _cached_ids(out / "cache")
    todo = [r for i, r in enumerate(rows) if i % nproc == pid and r.id not in done]
    chunk: list[Featurized] = []
    n_new, n_first, t_loop = 0, 0, time.time()
    t_first = None
    errors_file = _open_errors(out / "cache" / f"errors-p{pid:03d}.jsonl")
    bar = _bar(len(todo), progress and pid == 0)
    try:
        for item in featurize(todo, backbone, settings):
            if item.error is not None:
                errors_file.write(json.dumps(video_error(item.row, item.error)) + "\n")
                errors_file.flush()
            else:
                chunk.append(item)
                n_new += 1
                if item.call == 0:
                    n_first, t_first = n_first + 1, time.time()
            if len(chunk) >= settings.chunk_videos:
                _write_chunk(out / "cache", pid, chunk)
                chunk = []
            bar.update(1)
        if chunk:
            _write_chunk(out / "cache", pid, chunk)
    finally:
        bar.close()
        errors_file.close()
    t_end = time.time()
    loop_seconds = t_end - t_loop
    _sync("features")

    report = {}
    if pid == 0:
        report = _assemble(out, manifest_path, result, rows, backbone, glove, settings)
        report["throughput"] = {
            "videos_this_run": n_new, "seconds": round(loop_seconds, 2),
            **_rates("", n_new, loop_seconds, settings.num_frames),
            # The first backbone call also transforms the Winograd kernels and compiles (or loads) the
            # program: a one-time cost, reported apart from the rate after it.
            "first_call_seconds": round(t_first - t_loop, 2) if t_first else None,
            **_rates("steady_", n_new - n_first, t_end - t_first if n_new > n_first else 0.0, settings.num_frames),
            "processes": nproc, "local_devices": jax.local_device_count()}
        report["seconds_total"] = round(time.time() - t0, 2)
        files.write_json(out / "report.json", report)
    _sync("report")
    return report


def _assemble(out: Path, manifest_path, result, rows, backbone: Backbone, glove, settings: Settings) -> dict:
    """Cache chunks + manifest -> vocabulary, word vectors, labels, the TFDS dataset, errors, report."""
    features = _read_cache(out / "cache")
    row_ids = {r.id for r in rows}   # a cache from an earlier version of the manifest may hold other ids
    video_errors = [e for e in _read_errors(out / "cache") if e["id"] in row_ids]
    errors = write_errors(out / "errors.jsonl", result, video_errors)   # first: reported even if no dataset can be built
    ok = [r for r in rows if r.id in features]
    if not any(r.split == "train" for r in ok):
        raise ExtractError(f"{manifest_path}: no training row was extracted ({len(ok)} rows in other splits), "
                           f"so there is no median to label by; reasons in {out / 'errors.jsonl'}")
    vectors = text_lib.WordVectors.load(glove)
    tokens = {r.id: text_lib.tokenize(r.headline, settings.max_words, known=vectors) for r in ok}
    vocab = text_lib.Vocabulary.build(tokens.values(), vectors)
    vocab.save(out / "vocab.json")
    files.save_npy(out / "word_vectors.npy", vocab.embedding_matrix(vectors))
    threshold = manifest_lib.popularity_threshold(ok)

    examples = []
    for r in ok:
        ids, length = vocab.encode(tokens[r.id], settings.max_words)
        f, ts = features[r.id]
        examples.append({
            "id": r.id, "split": r.split, "headline": r.headline, "features": f, "timestamps": ts,
            "tokens": ids, "length": length, "views": r.views, "followers": r.followers,
            "normalized_views": r.normalized_views, "label": manifest_lib.label(r, threshold)})
    metadata = {
        "num_frames": settings.num_frames, "seconds": settings.seconds, "feature_dim": 2048,
        "max_words": settings.max_words, "image_size": backbone.metadata["image_size"],
        "threshold": threshold, "backbone": backbone.description, "backbone_dir": "backbone",
        "backbone_pretrained": bool(backbone.metadata.get("pretrained")), "vocab": "vocab.json",
        "word_vectors": "word_vectors.npy", "word_vectors_source": vectors.source,
        "manifest": str(Path(manifest_path).absolute())}
    tmp = out / ".tfds.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.write_dataset(tmp, examples, metadata)
    final = out / dataset.NAME
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp / dataset.NAME, final)
    shutil.rmtree(tmp, ignore_errors=True)

    by_reason = collections.Counter(e["reason"] for e in errors)
    return {
        "manifest_rows": result.n_data_rows, "extracted": len(ok), "failed": len(errors),
        "failed_by_reason": dict(sorted(by_reason.items())),
        "splits": {s: sum(r.split == s for r in ok) for s in dataset.SPLITS},
        "popular": int(sum(ex["label"] for ex in examples)), "threshold": threshold,
        "empty_headlines": len(result.empty_headlines), "vocabulary": len(vocab),
        "backbone": backbone.description, "dataset": str(final.absolute())}


def write_errors(path: Path, result: manifest_lib.ManifestResult, video_errors: list[dict]) -> list[dict]:
    """The manifest's rejected rows and the rows whose video failed, in row order, as JSON lines."""
    errors = [e.to_json() for e in result.errors] + list(video_errors)
    errors.sort(key=lambda e: (e.get("row") or 0, e.get("id") or ""))
    files.write_jsonl(path, errors)
    return errors


def video_error(row: manifest_lib.Row, error: VideoError) -> dict:
    """The errors.jsonl line of a row whose video could not be decoded."""
    return {"row": row.row, "id": row.id, "reason": error.reason, "message": str(error), "video": str(row.video)}


# ------------------------------------------------------------------------------------------- cache
def _write_chunk(cache: Path, pid: int, chunk: list[Featurized]) -> None:
    k = len(list(cache.glob(f"features-p{pid:03d}-*.npz")))
    path = cache / f"features-p{pid:03d}-{k:05d}.npz"
    buf = io.BytesIO()
    np.savez(buf, ids=np.array([c.row.id for c in chunk]),
             features=np.stack([c.features for c in chunk]).astype(np.float16),
             timestamps=np.stack([c.timestamps for c in chunk]).astype(np.float32))
    files.write_bytes(path, buf.getvalue())


def _read_cache(cache: Path) -> dict:
    out = {}
    for path in sorted(cache.glob("features-p*.npz")):
        with np.load(path, allow_pickle=False) as z:
            for i, id_ in enumerate(z["ids"]):
                out[str(id_)] = (z["features"][i], z["timestamps"][i])
    return out


def _cached_ids(cache: Path) -> set:
    ids = set()
    for path in cache.glob("features-p*.npz"):
        with np.load(path, allow_pickle=False) as z:
            ids.update(str(i) for i in z["ids"])
    return ids | {e["id"] for e in _read_errors(cache)}


def _open_errors(path: Path):
    """Append to ``path``; a last line cut short by a kill is ended first, so the next line stays parseable."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
    else:
        cut = False
    f = open(path, "a", encoding="utf-8")
    if cut:
        f.write("\n")
        f.flush()
    return f


def _read_errors(cache: Path) -> list[dict]:
    errors = []
    for path in sorted(cache.glob("errors-p*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    errors.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill: that video is redone
                    continue
    return errors


# ------------------------------------------------------------------------------------------- helpers
def _rates(prefix: str, videos: int, seconds: float, num_frames: int) -> dict:
    ok = seconds > 0
    return {f"{prefix}videos_per_s": round(videos / seconds, 3) if ok else None,
            f"{prefix}frames_per_s": round(videos * num_frames / seconds, 2) if ok else None}


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"popjax-extract-{name}")


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="video", desc="extract", disable=not enabled, smoothing=0.1)

"""``popjax extract``: a manifest of videos and headlines -> the features dataset the models train on.

Per video: the N = 18 frames of the first 6 s (``data.video``), their ResNet50 features x_i (``Backbone``),
the headline's tokens (``data.text``) and the label (``data.manifest``). Frames are decoded by a pool of
threads (each drives one ffmpeg process, so decoding runs outside the GIL) while the main thread runs the
jit-compiled, batched backbone on all local devices.

The dataset is planned from the manifest before anything is decoded: the rows of each split, in id order,
are cut into shards of ``Settings.shard_videos``; the popularity threshold (the median normalised views of
the training rows) and the vocabulary are fixed from the manifest too. So every shard can be written on its
own, by any process, streaming: with several processes (``jax.distributed``), shard k is written by process
k mod P, straight into the TFDS array_record dataset, and process 0 writes the dataset's metadata once every
shard is complete. The dataset's content does not depend on the number of processes or on interruptions.

The output directory must be one directory that every process sees (a shared filesystem); each run checks
this first. It is resumable: a shard is done once its record in ``work/shards/`` is written (after the shard
file), and is not redone; the backbone is saved in ``backbone/`` so a resumed run, ``predict`` and ``explain``
use exactly the same one. Every rejected row goes to ``errors.jsonl`` with its reason; ``report.json`` has the
counts and the throughput.

Cross-process steps are either collectives that every process calls (barriers, the backbone's orbax save and
restore, small all-gathers) or plain atomic file writes by one process followed by a barrier.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import jax
import numpy as np

from popjax import files
from popjax.backbone import Backbone, resolve_dtype
from popjax.data import dataset, manifest as manifest_lib, text as text_lib
from popjax.data.video import VideoError, sample_frames
from popjax.runtime import usable_cores
from popjax.weights import WeightsError, load_backbone, save_backbone

# The random demo backbone's initial residual scale: small enough that the random network's features keep
# local colour and texture (a planted cue stays learnable), large enough to see the whole frame.
DEMO_RESIDUAL_SCALE = 0.2
CALIBRATION_FRAMES = 64
PARTIAL_BATCH_AFTER_S = 1.0   # featurize: encode a partial batch when no video finished decoding for this long
FORMAT = 2   # the layout of ``work/``; a work directory of another layout is started afresh


class ExtractError(RuntimeError):
    """No dataset can be built (no decodable video, no extracted training row, an output directory that the
    processes do not share).

    ``errors.jsonl`` is still written first where rows were rejected, so every rejected row keeps its reason.
    """


@dataclasses.dataclass(frozen=True)
class Settings:
    num_frames: int = 18       # N (paper)
    seconds: float = 6.0       # the first 6 s (paper)
    max_words: int = 32
    image_size: int = 0        # frames' side at the backbone's input, pixels; 0 = the backbone's own (224)
    workers: int = 0           # decoding threads; 0 = one per usable core
    decoder: str = "cpu"       # "cpu" or "cuda" (NVDEC; "auto" is resolved by the command line)
    video_timeout: float = 120.0   # seconds one video may take to decode before it is reported as a timeout
    shard_videos: int = 64     # manifest rows per dataset shard: the unit of work, of resume and of memory


@dataclasses.dataclass
class Featurized:
    row: manifest_lib.Row
    frames: np.ndarray | None = None       # uint8 [N, S, S, 3] until encoded
    features: np.ndarray | None = None     # float32 [N, 2048]
    timestamps: np.ndarray | None = None
    error: VideoError | None = None
    call: int = -1                         # the backbone call that encoded it (0: the first, which compiles)
    decoder: str | None = None             # what decoded it ("cpu", "cuda")
    fallback: str | None = None            # why NVDEC did not, when it was asked to


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``num_shards`` of ``split``: manifest rows, in id order."""
    split: str
    index: int
    num_shards: int
    rows: tuple

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.num_shards:05d}"

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.rows]


def plan_shards(rows: Sequence[manifest_lib.Row], shard_videos: int) -> list[Shard]:
    """The dataset's shards: each split's rows in id order, ``shard_videos`` to a shard; train, val, test."""
    shards = []
    for split in dataset.SPLITS:
        part = sorted((r for r in rows if r.split == split), key=lambda r: r.id)
        n = -(-len(part) // shard_videos)
        shards += [Shard(split, k, n, tuple(part[k * shard_videos:(k + 1) * shard_videos])) for k in range(n)]
    return shards


# --------------------------------------------------------------------------------------------- core
def default_batch_size() -> int:
    """Frames per backbone call when none is given: 32 on a CPU (larger batches are no faster there), 256 per
    local device on a GPU or TPU (enough to fill one)."""
    return 32 if jax.default_backend() == "cpu" else 256 * jax.local_device_count()


def frames_per_call(batch_size: int, num_frames: int) -> int:
    """A backbone batch that holds whole videos (``batch_size`` frames, rounded to a multiple of N)."""
    return max(1, round(batch_size / num_frames)) * num_frames


def featurize(rows: Iterable[manifest_lib.Row], backbone: Backbone, settings: Settings = Settings()
              ) -> Iterator[Featurized]:
    """Decode and encode ``rows``, overlapping decoding with the backbone.

    ``settings.workers`` threads (0: one per usable core) each drive one ffmpeg (outside the GIL) with
    ``cores // workers`` decoder threads (one per worker when workers = cores: ``benchmarks/decode.py``
    measures the choices). Decoded videos are taken as they complete, from a window of ``workers + 2 x
    videos per batch`` rows in flight, so one slow or hanging video holds up only itself (until it times out
    and is reported). Each backbone batch of ``backbone.batch_size // N`` whole videos is dispatched before
    the previous batch's features are fetched, so the devices always have the next batch queued; when no
    video finishes for ``PARTIAL_BATCH_AFTER_S`` the decoded ones go as a partial batch.
    Items come out batch by batch (a failed video as soon as it fails), not in row order."""
    cores = usable_cores()
    workers = settings.workers or cores
    threads = max(1, cores // workers)
    size = backbone.metadata["image_size"]
    batch_videos = max(1, backbone.batch_size // settings.num_frames)
    rows = iter(rows)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        running: dict = {}   # future -> (submission number, row)
        submitted = 0

        def fill():
            nonlocal submitted
            while len(running) < workers + 2 * batch_videos:   # bounded read-ahead
                row = next(rows, None)
                if row is None:
                    return
                future = pool.submit(sample_frames, row.video, settings.num_frames, settings.seconds, size,
                                     timeout=settings.video_timeout, decoder=settings.decoder, threads=threads)
                running[future], submitted = (submitted, row), submitted + 1

        fill()
        batch: list[Featurized] = []
        queued = None   # (items, result function) of the batch on the devices
        calls = 0
        while running or batch:
            done = wait(running, PARTIAL_BATCH_AFTER_S, FIRST_COMPLETED).done if running else set()
            for future in sorted(done, key=lambda f: running[f][0]):
                _, row = running.pop(future)
                try:
                    sampled = future.result()
                except VideoError as e:
                    yield Featurized(row, error=e)
                    continue
                batch.append(Featurized(row, frames=sampled.frames, timestamps=sampled.timestamps,
                                        decoder=sampled.info["decoder"], fallback=sampled.info.get("fallback")))
            fill()
            # a full batch; or what is ready when no decoder finished for a while (slow videos, the tail)
            while len(batch) >= batch_videos or (batch and not done):
                now, batch = batch[:batch_videos], batch[batch_videos:]
                dispatched = (now, backbone.features_async(np.concatenate([b.frames for b in now])), calls)
                for item in now:
                    item.frames = None
                calls += 1
                if queued:
                    yield from _collect(*queued)
                queued = dispatched
            if queued and not done:   # the decoders are stalled: hand out what the devices finished
                yield from _collect(*queued)
                queued = None
        if queued:
            yield from _collect(*queued)


def _collect(batch: list[Featurized], result, call: int) -> list[Featurized]:
    for item, f in zip(batch, np.split(result(), len(batch))):
        item.features, item.call = f, call
    return batch


# ------------------------------------------------------------------------------------------ backbone
def prepare_backbone(out: Path, rows, weights=None, seed: int = 0, settings: Settings = Settings(),
                     **backbone_kwargs) -> Backbone:
    """The backbone of this extraction, saved in ``out/backbone`` the first time and reused after.

    With ``weights`` (a ``convert-weights`` directory) that backbone; otherwise a random ResNet50 with
    residual scale 0.2 whose BatchNorm statistics are re-estimated on the first frames of the training
    split (``Backbone.calibrate``). With several processes each one computes it, all of them save it
    together (orbax's save is collective and writes process 0's copy) and all read back what was saved.
    """
    target = out / "backbone"
    exists = (target / "metadata").is_dir()
    variables = metadata = no_video = problem = None
    if not exists:
        try:
            variables, metadata = _new_backbone(rows, weights, seed, settings, backbone_kwargs)
        except _NoVideo as e:
            no_video = e
        except (WeightsError, FileNotFoundError) as e:
            problem = str(e)
    _agree(problem, "preparing the backbone")
    flags = _gather([exists, no_video is not None])
    if (flags != flags[0]).any():
        raise ExtractError(f"{out}: the processes disagree on whether {target} exists or whether any video "
                           "decodes: every process must see the same output directory and the same videos")
    if no_video is not None:
        raise no_video
    if not exists:
        save_backbone(target, variables, metadata)   # every process calls it (orbax's save is collective)
    return Backbone.load(target, **backbone_kwargs)


def _new_backbone(rows, weights, seed: int, settings: Settings, backbone_kwargs) -> tuple[dict, dict]:
    if weights:
        variables, metadata = load_backbone(weights)
        metadata["path"] = str(Path(weights).absolute())
        metadata["image_size"] = settings.image_size or metadata["image_size"]
        return variables, metadata
    backbone = Backbone.random(seed, residual_scale_init=DEMO_RESIDUAL_SCALE, image_size=settings.image_size or 224,
                               **backbone_kwargs)
    # Its features program compiles meanwhile (calibration changes no shape): the loop's first call runs at once.
    with ThreadPoolExecutor(1, thread_name_prefix="compile") as pool:
        ahead = pool.submit(backbone.compile)
        backbone = backbone.calibrate(_calibration_frames(rows, settings, backbone))
        ahead.result()
    return jax.device_get(backbone.variables), backbone.metadata


def _calibration_frames(rows, settings: Settings, backbone: Backbone) -> np.ndarray:
    # Training rows (by id); the others only if no training video decodes, so that the run still gets
    # to record every row's error (it then stops: no training row, no dataset).
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
def extract(manifest_path, out, *, weights=None, batch_size: int = 0, glove: str | None = None,
            settings: Settings = Settings(), seed: int = 0, progress: bool = True, dtype="float32") -> dict:
    """Run (or resume) an extraction; returns the report (also in ``out/report.json``).

    ``batch_size``: frames per backbone call (0: ``default_batch_size``). With several processes every
    process calls it with the same arguments."""
    t0 = time.time()
    batch_size = batch_size or default_batch_size()
    dtype = resolve_dtype(dtype).name   # "auto" decided once: the fingerprint and the dataset record the choice
    out = Path(out)
    pid, nproc = jax.process_index(), jax.process_count()
    result = manifest_lib.read_manifest(manifest_path)
    rows = sorted(result.rows, key=lambda r: r.id)
    try:
        threshold = manifest_lib.popularity_threshold(rows)
    except ValueError:
        if pid == 0:
            write_errors(out / "errors.jsonl", result, [])
        raise ExtractError(f"{manifest_path}: no accepted training row, so there is no median to label by "
                           f"(rejected rows in {out / 'errors.jsonl'}); no dataset written") from None
    shards = plan_shards(rows, settings.shard_videos)
    work = out / "work"
    run = _join(out, work, _fingerprint(rows, settings, weights=weights, seed=seed, dtype=dtype, glove=glove))
    try:
        # every call a full batch of whole videos (buckets=()): one compiled program
        backbone = prepare_backbone(out, rows, weights, seed, settings, dtype=dtype, buckets=(),
                                    batch_size=frames_per_call(batch_size, settings.num_frames))
    except _NoVideo as e:
        if pid == 0:
            write_errors(out / "errors.jsonl", result, e.video_errors)
        raise ExtractError(f"{manifest_path}: no decodable video among its {len(rows)} accepted rows "
                           f"(reasons in {out / 'errors.jsonl'}); no dataset written") from None
    vocab, vectors_source = _prepare_text(out, rows, glove, settings)
    metadata = {
        "num_frames": settings.num_frames, "seconds": settings.seconds, "feature_dim": 2048,
        "max_words": settings.max_words, "image_size": backbone.metadata["image_size"],
        "threshold": threshold, "backbone": backbone.description, "backbone_dir": "backbone", "backbone_dtype": dtype,
        "backbone_pretrained": bool(backbone.metadata.get("pretrained")), "vocab": "vocab.json",
        "word_vectors": "word_vectors.npy", "word_vectors_source": vectors_source,
        "manifest": str(Path(manifest_path).absolute())}

    mine = [s for k, s in enumerate(shards) if k % nproc == pid]
    todo = [s for s in mine if _shard_record(work, s, run["fingerprint"]) is None]
    timing = _write_shards(out, work, todo, backbone, vocab, threshold, metadata, settings, run["fingerprint"],
                           progress and pid == 0)
    files.write_json(work / f"throughput-p{pid:03d}.json", timing)
    _sync("shards")

    def finish():
        report = _finalize(out, work, manifest_path, result, shards, metadata, run, len(vocab))
        report["throughput"] = _throughput(work, nproc, settings.num_frames)
        report["seconds_total"] = round(time.time() - t0, 2)
        files.write_json(out / "report.json", report)
        return report

    return _on_process_0(work, run, finish)


def _write_shards(out: Path, work: Path, todo: list[Shard], backbone: Backbone, vocab, threshold: float,
                  metadata: dict, settings: Settings, fingerprint: str, progress: bool) -> dict:
    """Decode, encode and write ``todo``'s shards, each as soon as its last row is done. A writer thread
    serializes and writes the finished shards (examples in id order) while the main thread keeps the
    decoders and the devices busy; at most two finished shards wait for it, so memory stays bounded by a
    few shards and the decoders' read-ahead."""
    spec = dataset.features_spec(metadata)
    shard_of = {r.id: s for s in todo for r in s.rows}
    open_shards: dict[str, dict] = {}
    n_new = n_first = 0
    decoded_by: collections.Counter = collections.Counter()
    fallbacks: list[dict] = []
    writes: collections.deque = collections.deque()
    t_loop, cpu0 = time.time(), _children_cpu_seconds()
    t_first = None
    bar = _bar(len(shard_of), progress)

    def write(shard: Shard, part: dict) -> None:
        examples = [spec.serialize_example(e) for _, e in sorted(part["examples"], key=lambda x: x[0])]
        num_bytes = dataset.write_shard(dataset.shard_path(out, shard.split, shard.index, shard.num_shards), examples)
        files.write_json(_record_path(work, shard), {   # after the shard: the record says it is done
            "fingerprint": fingerprint, "shard": shard.name, "process": jax.process_index(), "ids": shard.ids,
            "examples": len(examples), "num_bytes": num_bytes, "popular": part["popular"],
            "errors": sorted(part["errors"], key=lambda e: e["id"])})

    with ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
        try:
            for item in featurize((r for s in todo for r in s.rows), backbone, settings):
                shard = shard_of[item.row.id]
                part = open_shards.setdefault(shard.name, {"examples": [], "errors": [], "popular": 0, "done": 0})
                part["done"] += 1
                if item.error is not None:
                    part["errors"].append(video_error(item.row, item.error))
                else:
                    example = _example(item, vocab, threshold, settings)
                    part["popular"] += example["label"]
                    part["examples"].append((item.row.id, example))
                    n_new += 1
                    decoded_by[item.decoder] += 1
                    if item.fallback:
                        fallbacks.append({"id": item.row.id, "video": item.row.video, "reason": item.fallback})
                    if item.call == 0:
                        n_first, t_first = n_first + 1, time.time()
                bar.update(1)
                if part["done"] == len(shard.rows):
                    del open_shards[shard.name]
                    while len(writes) >= 2:
                        writes.popleft().result()   # raises what the writer raised
                    writes.append(writer.submit(write, shard, part))
            while writes:
                writes.popleft().result()
        finally:
            bar.close()
    t_end = time.time()
    return {"videos": n_new, "seconds": t_end - t_loop,
            "first_call_seconds": t_first - t_loop if t_first else None,
            "steady_videos": n_new - n_first, "steady_seconds": t_end - t_first if t_first else 0.0,
            "attempted": len(shard_of), "decode_core_seconds": _children_cpu_seconds() - cpu0,
            "decoded_by": dict(decoded_by), "fallbacks": fallbacks}


def _children_cpu_seconds() -> float:
    """CPU time of this process's finished child processes (the ffmpeg decoders)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _example(item: Featurized, vocab, threshold: float, settings: Settings) -> dict:
    r = item.row
    ids, length, _ = vocab.encode_headline(r.headline, settings.max_words)
    return {"id": r.id, "split": r.split, "headline": r.headline, "features": item.features.astype(np.float16),
            "timestamps": item.timestamps.astype(np.float32), "tokens": ids, "length": length, "views": r.views,
            "followers": r.followers, "normalized_views": r.normalized_views,
            "label": manifest_lib.label(r, threshold)}


def _prepare_text(out: Path, rows, glove, settings: Settings):
    """The vocabulary (GloVe words of all accepted headlines) and its frozen word vectors, written by process 0
    and read by every process."""
    def build():
        vectors = text_lib.WordVectors.load(glove)
        tokens = [text_lib.tokenize(r.headline, settings.max_words, known=vectors) for r in rows]
        vocab = text_lib.Vocabulary.build(tokens, vectors)
        files.save_npy(out / "word_vectors.npy", vocab.embedding_matrix(vectors))
        vocab.save(out / "vocab.json")

    _agree(_problem(build) if jax.process_index() == 0 else None, "building the vocabulary")
    vocab = text_lib.Vocabulary.load(out / "vocab.json")
    return vocab, vocab.meta.get("vectors", {}).get("source")


def _finalize(out: Path, work: Path, manifest_path, result, shards: list[Shard], metadata: dict, run: dict,
              vocabulary: int) -> dict:
    """Process 0, once every shard is written: errors.jsonl, the dataset's metadata, the report."""
    records = [_shard_record(work, s, run["fingerprint"]) for s in shards]
    missing = [s.name for s, r in zip(shards, records) if r is None]
    if missing:
        raise ExtractError(f"{out}: {len(missing)} of {len(shards)} shards are missing after every process "
                           f"finished (e.g. {', '.join(missing[:3])}): the output directory must be one "
                           "directory that every process sees")
    errors = write_errors(out / "errors.jsonl", result, [e for r in records for e in r["errors"]])
    lengths, num_bytes = collections.defaultdict(list), collections.Counter()
    for s, r in zip(shards, records):
        lengths[s.split].append(r["examples"])
        num_bytes[s.split] += r["num_bytes"]
    if not sum(lengths["train"]):
        raise ExtractError(f"{manifest_path}: no training row was extracted, so there is no dataset to train "
                           f"on; reasons in {out / 'errors.jsonl'}")
    for s in shards:   # a split whose every video failed is left out of the dataset
        if not sum(lengths[s.split]):
            dataset.shard_path(out, s.split, s.index, s.num_shards).unlink(missing_ok=True)
    final = dataset.write_metadata(out, metadata, {k: v for k, v in lengths.items() if sum(v)}, num_bytes)
    by_reason = collections.Counter(e["reason"] for e in errors)
    return {
        "manifest_rows": result.n_data_rows, "extracted": sum(r["examples"] for r in records),
        "failed": len(errors), "failed_by_reason": dict(sorted(by_reason.items())),
        "splits": {s: sum(lengths[s]) for s in dataset.SPLITS},
        "popular": sum(r["popular"] for r in records), "threshold": metadata["threshold"],
        "empty_headlines": len(result.empty_headlines), "vocabulary": vocabulary,
        "backbone": metadata["backbone"], "backbone_dtype": metadata["backbone_dtype"], "shards": len(shards),
        "dataset": str(final.parent.absolute())}


def _throughput(work: Path, nproc: int, num_frames: int) -> dict:
    """This run's decode+encode loop over every process: videos summed, time of the slowest process."""
    t = [json.loads((work / f"throughput-p{p:03d}.json").read_text()) for p in range(nproc)]
    videos, seconds = sum(x["videos"] for x in t), max(x["seconds"] for x in t)
    first = [x["first_call_seconds"] for x in t if x["first_call_seconds"] is not None]
    steady, steady_seconds = sum(x["steady_videos"] for x in t), max(x["steady_seconds"] for x in t)
    attempted = sum(x["attempted"] for x in t)
    decoded_by = sum((collections.Counter(x["decoded_by"]) for x in t), collections.Counter())
    return {"videos_this_run": videos, "seconds": round(seconds, 2), **_rates("", videos, seconds, num_frames),
            # ffmpeg's CPU time (all processes) per video it was given, failed ones included
            "decode_core_seconds_per_video": round(sum(x["decode_core_seconds"] for x in t) / attempted, 4)
            if attempted else None,
            "decoded_by": dict(decoded_by), "decoder_fallbacks": [f for x in t for f in x["fallbacks"]],
            # The first backbone call also transforms the Winograd kernels and compiles (or loads) the
            # program: a one-time cost, reported apart from the rate after it.
            "first_call_seconds": round(max(first), 2) if first else None,
            **_rates("steady_", steady, steady_seconds if steady else 0.0, num_frames),
            "processes": nproc, "local_devices": jax.local_device_count()}


def write_errors(path: Path, result: manifest_lib.ManifestResult, video_errors: list[dict]) -> list[dict]:
    """The manifest's rejected rows and the rows whose video failed, in row order, as JSON lines."""
    errors = [e.to_json() for e in result.errors] + list(video_errors)
    errors.sort(key=lambda e: (e.get("row") or 0, e.get("id") or ""))
    files.write_jsonl(path, errors)
    return errors


def video_error(row: manifest_lib.Row, error: VideoError) -> dict:
    """The errors.jsonl line of a row whose video could not be decoded."""
    return {"row": row.row, "id": row.id, "reason": error.reason, "message": str(error), "video": str(row.video)}


# ------------------------------------------------------------------------------------- work directory
def _fingerprint(rows, settings: Settings, **options) -> str:
    """What the dataset's content depends on: the accepted rows, the settings, the backbone and word vectors."""
    kept = {k: v for k, v in dataclasses.asdict(settings).items() if k != "workers"}   # workers: speed only
    content = {"format": FORMAT, "settings": kept, "options": options,
               "rows": [[r.id, str(r.video), r.headline, r.views, r.followers, r.split] for r in rows]}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _join(out: Path, work: Path, fingerprint: str) -> dict:
    """Start (or resume) a run of every process in ``out``; checks that they all see the same directory.

    Process 0 writes ``work/plan.json`` with a fresh run id (first clearing the work directory, dataset and
    backbone of an extraction with another manifest or other settings); every process then reads it back."""
    run = {"fingerprint": fingerprint, "run": _run_id(), "processes": jax.process_count()}
    plan = work / "plan.json"
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        if (_read_json(plan) or {}).get("fingerprint") != fingerprint:
            for made in (work, out / dataset.NAME, out / "backbone"):
                shutil.rmtree(made, ignore_errors=True)
        files.write_json(plan, run)
    _sync("plan")
    seen = _read_json(plan)
    problem = None
    if seen is None or seen.get("run") != run["run"]:
        problem = (f"process {jax.process_index()} cannot see {plan.absolute()} written by process 0: the output "
                   "directory must be one directory that every process sees (a shared filesystem)")
    elif seen["fingerprint"] != fingerprint:
        problem = (f"process {jax.process_index()} read another manifest or other settings than process 0: every "
                   "process must run the same command on the same manifest")
    _agree(problem, "checking the shared output directory")
    return run


def _record_path(work: Path, shard: Shard) -> Path:
    return work / "shards" / f"{shard.name}.json"


def _shard_record(work: Path, shard: Shard, fingerprint: str) -> dict | None:
    """The record of a finished shard of this plan, or None."""
    record = _read_json(_record_path(work, shard))
    if record is None or record.get("fingerprint") != fingerprint or record.get("ids") != shard.ids:
        return None
    return record


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------------ across processes
def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"popjax-extract-{name}")


def _gather(values) -> np.ndarray:
    """int32 [processes, len(values)]: every process's ``values`` (a collective)."""
    local = np.asarray(values, np.int32)[None]
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(local[0])).reshape(jax.process_count(), -1)


def _run_id() -> str:
    """A random id of this run, the same in every process (process 0's)."""
    ident = np.frombuffer(os.urandom(16), np.int32)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ident = np.asarray(multihost_utils.broadcast_one_to_all(ident))
    return ident.astype(np.uint32).tobytes().hex()


def _problem(fn) -> str | None:
    """Run ``fn``; the message of an error that users cause (bad file, bad input), else None."""
    try:
        fn()
    except (ExtractError, WeightsError, FileNotFoundError, ValueError) as e:
        return str(e)
    return None


def _agree(problem: str | None, step: str) -> None:
    """Every process stops if any had a ``problem`` (a collective): with that message where it happened, and a
    line naming the processes elsewhere."""
    failed = np.flatnonzero(_gather([problem is not None])[:, 0])
    if problem is not None:
        raise ExtractError(problem)
    if failed.size:
        raise ExtractError(f"process(es) {failed.tolist()} stopped while {step}; their output says why")


def _on_process_0(work: Path, run: dict, fn) -> dict:
    """``fn()`` on process 0; its report (or its error) reaches every process through ``work/outcome.json``."""
    path = work / "outcome.json"
    if jax.process_index() == 0:
        try:
            report = fn()
        except Exception as e:   # the others must not wait for an outcome that never comes
            files.write_json(path, {"run": run["run"], "error": str(e) if isinstance(e, ExtractError)
                                    else f"process 0 failed: {type(e).__name__}: {e}"})
            _sync("outcome")
            raise
        files.write_json(path, {"run": run["run"], "report": report})
    _sync("outcome")
    outcome = _read_json(path) or {}
    if outcome.get("run") != run["run"]:
        raise ExtractError(f"process {jax.process_index()} cannot see {path.absolute()} written by process 0")
    if "error" in outcome:
        raise ExtractError(outcome["error"])
    return outcome["report"]


# ------------------------------------------------------------------------------------------- helpers
def _rates(prefix: str, videos: int, seconds: float, num_frames: int) -> dict:
    ok = seconds > 0
    return {f"{prefix}videos_per_s": round(videos / seconds, 3) if ok else None,
            f"{prefix}frames_per_s": round(videos * num_frames / seconds, 2) if ok else None}


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="video", desc="extract", disable=not enabled, smoothing=0.1)

"""``popjax extract``: manifest -> features dataset (TFDS array_record) + errors.jsonl + report.json.

One small corpus (real H.264 clips from the synthetic demo, plus broken files made with the bundled
ffmpeg) and one manifest holding every kind of bad row are extracted once through the CLI; the tests
then check that

* every bad row and bad file is in ``errors.jsonl`` with its reason and every other row is in the
  dataset: nothing is lost (rows extracted + rows rejected == data rows), and the exit codes
  (0 all rows extracted, 1 some rejected, 2 no dataset: missing manifest, no decodable video);
* an extraction SIGKILLed half way and restarted ends with exactly the dataset and errors.jsonl of
  the uninterrupted run (bit for bit, features included), redoing only what was not cached;
* the dataset reads back with ``tfds.data_source`` in a process where TensorFlow cannot be imported,
  with each row's split (sha256 of the id), label (above the train median of views / followers),
  features (N x 2048 float16), timestamps (``sample_frames``) and tokens (the saved vocabulary);
* the stored features are the saved backbone's features of ``sample_frames``' frames, in float16;
* the command as 2 processes on loopback (``jax.distributed`` + gloo, one shared output directory), one of
  them SIGKILLed half way and both restarted, writes the 1-process dataset, field by field and in the same
  order, with the same errors.jsonl and report counts (the restart is itself a 2-process run over the shards
  left, so one test covers both); processes that do not share the output directory stop at once with one line.

N = 4 frames per video (not the paper's 18) keeps the random ResNet50 on 2 CPU cores cheap; nothing
checked here depends on N.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from popjax.data import dataset
from popjax.data.demo import write_corpus
from popjax.data.manifest import SPLITS, assign_split
from popjax.data.video import ffmpeg_exe, sample_frames
from synthetic import free_port

pytestmark = pytest.mark.slow   # every test runs `popjax extract` (the ``full`` fixture or its own) in subprocesses

REPO = Path(__file__).resolve().parents[1]
NUM_FRAMES = 4
BATCH_SIZE = 8      # frames per backbone call
MAX_WORDS = 12
CLI_TIMEOUT = 300

# Headlines of the good rows: plain words, a planted cue word, a compound GloVe has (e-mail) and
# one it lacks (cat-video: split at the hyphen), clitics, numbers, an out-of-vocabulary word, an
# emoji, more words than MAX_WORDS, and an empty headline.
HEADLINES = [
    "Puppy surprise at the beach",
    "E-mail tips for 2019!",
    "The best cat-video zzqxvw ever",
    "Don't miss the U.S. team's 5-year-old star",
    "",
    "Giveaway \u2615 today only",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
    "Weekend recipe: 3.5 cups of flour",
    "City news tonight",
    "How to fix a bike",
]
GOOD_IDS = [f"clip{i:02d}" for i in range(len(HEADLINES))]


def _cli(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "popjax.cli", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _env() -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _extract_args(manifest: Path, out: Path) -> list[str]:
    return ["extract", "--manifest", str(manifest), "--out", str(out), "--num-frames", str(NUM_FRAMES),
            "--batch-size", str(BATCH_SIZE), "--max-words", str(MAX_WORDS), "--shard-videos", "2", "--quiet"]


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *args], check=True, capture_output=True)


def _write_csv(path: Path, rows: list[list]) -> None:
    """CSV written as bytes, so a row may hold bytes that are not UTF-8."""
    out = bytearray()
    for row in rows:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(["\x00BYTES\x00" if isinstance(v, bytes) else v for v in row])
        line = buf.getvalue().encode("utf-8")
        for v in row:
            if isinstance(v, bytes):
                line = line.replace(b"\x00BYTES\x00", v, 1)
        out += line
    path.write_bytes(bytes(out))


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Videos, and a manifest with every kind of bad row among good ones (``expected``: row -> reason)."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root / "demo", num_videos=len(GOOD_IDS), seed=0)
    videos = sorted((root / "demo" / "videos").glob("*.mp4"))
    bad = root / "bad"
    bad.mkdir()
    (bad / "text.mp4").write_text("this is not a video\n")
    (bad / "empty.mp4").write_bytes(b"")
    # moov atom at the end (no +faststart): cut in half, the index is gone
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=3", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", str(bad / "whole.mp4"))
    data = (bad / "whole.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) // 2])
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(bad / "audio_only.mp4"))

    good = {}   # id -> (video, headline, views, followers)
    for i, (id_, video, headline) in enumerate(zip(GOOD_IDS, videos, HEADLINES)):
        followers = 1000 * (i + 1)
        views = followers * ((7 * i) % 10 + 1) // 4    # distinct normalized views, not in id order
        good[id_] = (video.relative_to(root).as_posix(), headline, views, followers)

    def row(id_, **change):
        video, headline, views, followers = good[id_]
        fields = {"id": id_, "video": video, "headline": headline, "views": views, "followers": followers}
        return {**fields, **change}

    v0 = good["clip00"][0]
    entries = [  # (row fields, expected reason or None); bad-file ids interleave the good ids on purpose
        (row("clip00"), None),
        (row("clip01"), None),
        ({**row("clip00"), "headline": "same id again"}, "duplicate_id"),
        (row("clip02"), None),
        ({"id": "clip02_text", "video": "bad/text.mp4", "headline": "a", "views": 5, "followers": 10}, "not_a_video"),
        (row("clip03"), None),
        ({"id": "nofile", "video": "bad/nope.mp4", "headline": "b", "views": 5, "followers": 10}, "missing_file"),
        (row("clip04"), None),
        ({"id": "noviews", "video": v0, "headline": "c", "views": "", "followers": 10}, "missing_views"),
        ({"id": "nofollowers", "video": v0, "headline": "d", "views": 5, "followers": ""}, "missing_followers"),
        (row("clip05"), None),
        ({"id": "clip05_truncated", "video": "bad/truncated.mp4", "headline": "e", "views": 5, "followers": 10},
         "decode_error"),
        ({"id": "negviews", "video": v0, "headline": "f", "views": -5, "followers": 10}, "negative_views"),
        ({"id": "negfollowers", "video": v0, "headline": "g", "views": 5, "followers": -10}, "negative_followers"),
        (row("clip06"), None),
        ({"id": "zerofollowers", "video": v0, "headline": "h", "views": 5, "followers": 0}, "zero_followers"),
        ({"id": "nanviews", "video": v0, "headline": "i", "views": "nan", "followers": 10}, "bad_number"),
        (row("clip07"), None),
        ({"id": "latin1", "video": v0, "headline": b"caf\xe9 au lait", "views": 5, "followers": 10}, "non_utf8"),
        ({"id": "clip08_audio", "video": "bad/audio_only.mp4", "headline": "j", "views": 5, "followers": 10},
         "not_a_video"),
        (row("clip08"), None),
        (row("clip09"), None),
        ({"id": "clip09_empty", "video": "bad/empty.mp4", "headline": "k", "views": 5, "followers": 10},
         "not_a_video"),
    ]
    header = ["id", "video", "headline", "views", "followers"]
    _write_csv(root / "manifest.csv", [header] + [[f[k] for k in header] for f, _ in entries])
    expected = {n: reason for n, (_, reason) in enumerate(entries, start=1) if reason}
    ids_by_row = {n: f["id"] for n, (f, _) in enumerate(entries, start=1)}
    assert {assign_split(i) for i in GOOD_IDS} == set(SPLITS)    # every split is represented
    return {"root": root, "manifest": root / "manifest.csv", "good": good, "expected": expected,
            "ids_by_row": ids_by_row, "rows": len(entries)}


@pytest.fixture(scope="module")
def full(corpus, tmp_path_factory):
    """The uninterrupted extraction of the corpus manifest, through the CLI."""
    out = tmp_path_factory.mktemp("full")
    proc = _cli(*_extract_args(corpus["manifest"], out))
    return {"out": out, "proc": proc}


def _errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "errors.jsonl").read_text(encoding="utf-8").splitlines()]


def _unaddressed(path: Path) -> str:
    return re.sub(r" @ 0x[0-9a-f]+\]", " @ 0x]", path.read_text(encoding="utf-8"))


def _all_examples(out: Path) -> dict[str, dict]:
    return {split: dataset.load_split(out, split) for split in SPLITS}


# ------------------------------------------------------------------------------------------ bad rows
def test_every_bad_row_is_reported_and_the_rest_extracted(corpus, full):
    proc, out = full["proc"], full["out"]
    assert proc.returncode == 1, proc.stderr[-3000:]                    # some rows were rejected
    assert "errors.jsonl" in proc.stderr
    assert "Downloading and preparing" not in proc.stdout + proc.stderr   # TFDS kept quiet

    errors = _errors(out)
    by_row = {e["row"]: e for e in errors}
    assert len(by_row) == len(errors), "a row reported twice"
    assert {n: e["reason"] for n, e in by_row.items()} == corpus["expected"]
    for n, e in by_row.items():
        assert e["id"] == corpus["ids_by_row"][n]
        assert e["message"].strip()

    extracted = {str(i) for split in _all_examples(out).values() for i in split.get("id", [])}
    assert extracted == set(corpus["good"])
    assert len(extracted) + len(errors) == corpus["rows"]               # nothing lost

    report = json.loads((out / "report.json").read_text())
    assert report["manifest_rows"] == corpus["rows"]
    assert report["extracted"] == len(corpus["good"])
    assert report["failed"] == len(corpus["expected"])
    assert sum(report["failed_by_reason"].values()) == report["failed"]
    t = report["throughput"]
    assert t["videos_this_run"] == len(corpus["good"])
    assert t["videos_per_s"] > 0
    assert t["decoded_by"] == {"cpu": len(corpus["good"])} and t["decoder_fallbacks"] == []
    assert t["decode_core_seconds_per_video"] > 0                      # ffmpeg's CPU time per video given
    # the first backbone call (compilation) apart; the steady rate counts the videos of the calls after it
    assert 0 < t["first_call_seconds"] <= t["seconds"]
    after_first = len(corpus["good"]) - BATCH_SIZE // NUM_FRAMES
    assert t["steady_videos_per_s"] * (t["seconds"] - t["first_call_seconds"]) == pytest.approx(after_first, rel=0.05)
    assert "NOT ImageNet-pretrained" in report["backbone"]
    # the dtype the features were computed in (extract's default), which predict and explain then use
    assert report["backbone_dtype"] == "float32" == dataset.read_metadata(out)["backbone_dtype"]


def test_exit_codes(corpus, tmp_path):
    root = corpus["root"]
    rows = [["id", "video", "headline", "views", "followers"]]
    rows += [[i, *corpus["good"][i]] for i in ("clip00", "clip01")]
    _write_csv(root / "clean.csv", rows)                                # video paths are relative to it
    proc = _cli(*_extract_args(root / "clean.csv", tmp_path / "clean"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "clean" / "errors.jsonl").read_text() == ""
    assert json.loads((tmp_path / "clean" / "report.json").read_text())["failed"] == 0

    proc = _cli(*_extract_args(tmp_path / "absent.csv", tmp_path / "absent"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr

    # No decodable video at all: no dataset (exit 2), but every row still has its reason.
    _write_csv(root / "hopeless.csv", [["id", "video", "headline", "views", "followers"],
                                       ["t", "bad/text.mp4", "x", 1, 2], ["a", "bad/audio_only.mp4", "y", 1, 2],
                                       ["z", "bad/text.mp4", "z", 1, 0]])
    proc = _cli(*_extract_args(root / "hopeless.csv", tmp_path / "hopeless"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "errors.jsonl" in proc.stderr
    reasons = {e["id"]: e["reason"] for e in _errors(tmp_path / "hopeless")}
    assert reasons == {"t": "not_a_video", "a": "not_a_video", "z": "zero_followers"}
    assert not (tmp_path / "hopeless" / dataset.NAME).exists()


# -------------------------------------------------------------------------------------------- resume
def _finished_shards(out: Path) -> list[dict]:
    records = []
    for path in (out / "work" / "shards").glob("*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            continue
    return records


def test_killed_and_restarted_extraction_equals_uninterrupted(corpus, full, tmp_path):
    out = tmp_path / "resumed"
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "popjax.cli", *_extract_args(corpus["manifest"], out)],
                                cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)   # its own process group: ffmpeg children die too
        try:
            deadline = time.monotonic() + CLI_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                if any(r["examples"] for r in _finished_shards(out)):
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (out / "report.json").exists() and not (out / dataset.NAME / dataset.VERSION / "dataset_info.json").exists()
    done = {i for r in _finished_shards(out) for i in r["ids"]}
    assert done and done < set(corpus["good"]) | {e["id"] for e in _errors(full["out"])}   # killed half way

    proc = _cli(*_extract_args(corpus["manifest"], out))
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["throughput"]["videos_this_run"] == len(set(corpus["good"]) - done)   # finished shards kept

    # errors.jsonl identical, except for the heap addresses ffmpeg prints in its log ("[in#0 @ 0x55..]"),
    # which decode_error messages quote and which differ from one ffmpeg process to the next.
    assert _unaddressed(out / "errors.jsonl") == _unaddressed(full["out"] / "errors.jsonl")
    assert (out / "vocab.json").read_bytes() == (full["out"] / "vocab.json").read_bytes()
    assert np.array_equal(np.load(out / "word_vectors.npy"), np.load(full["out"] / "word_vectors.npy"))
    assert dataset.read_metadata(out) == dataset.read_metadata(full["out"])
    resumed, uninterrupted = _all_examples(out), _all_examples(full["out"])
    for split in SPLITS:
        a, b = resumed[split], uninterrupted[split]
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, (split, key)
            assert a[key].tobytes() == b[key].tobytes(), (split, key)      # bit for bit


# ---------------------------------------------------------------------------------- read back, no TF
_READER = textwrap.dedent("""
    import json, sys
    import numpy as np

    class _Hidden:
        # Wraps each import finder so that tensorflow (and its submodules) cannot be found.
        def __init__(self, finder):
            self.finder = finder
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == "tensorflow":
                return None
            find = getattr(self.finder, "find_spec", None)
            return find(name, path, target) if find else None
        def invalidate_caches(self):
            getattr(self.finder, "invalidate_caches", lambda: None)()

    sys.meta_path[:] = [_Hidden(f) for f in sys.meta_path]
    try:
        import tensorflow
    except ModuleNotFoundError:
        pass
    else:
        sys.exit("tensorflow is importable")

    import tensorflow_datasets as tfds

    data_dir, dump = sys.argv[1], sys.argv[2]
    source = tfds.data_source("popjax_features", data_dir=data_dir)
    arrays, meta = {}, {"splits": sorted(source)}
    for split in source:
        examples = [source[split][i] for i in range(len(source[split]))]
        meta["metadata"] = source[split].dataset_info.metadata
        for key in examples[0]:
            values = [ex[key] for ex in examples]
            if isinstance(values[0], bytes):
                values = [v.decode("utf-8") for v in values]
            arrays[f"{split}/{key}"] = np.array(values) if not isinstance(values[0], np.ndarray) else np.stack(values)
    np.savez(dump, **arrays)
    meta["tensorflow_loaded"] = "tensorflow" in sys.modules or any(m.startswith("tensorflow.") for m in sys.modules)
    print(json.dumps(meta, default=str))
""")


def test_dataset_reads_back_without_tensorflow(corpus, full, tmp_path):
    from popjax.data.text import Vocabulary

    out = full["out"]
    proc = subprocess.run([sys.executable, "-c", _READER, str(out), str(tmp_path / "dump.npz")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(proc.stdout.strip().splitlines()[-1])
    assert meta["tensorflow_loaded"] is False
    dump = np.load(tmp_path / "dump.npz", allow_pickle=False)

    good = corpus["good"]
    nv = {i: views / followers for i, (_, _, views, followers) in good.items()}
    # The threshold is fixed from the manifest before decoding: the median over every accepted training row,
    # including those whose video then fails (views 5, followers 10 in this corpus).
    undecodable = [corpus["ids_by_row"][n] for n, reason in corpus["expected"].items()
                   if reason in ("not_a_video", "decode_error")]
    train_nv = [nv[i] for i in good if assign_split(i) == "train"] + [
        5 / 10 for i in undecodable if assign_split(i) == "train"]
    median = float(np.median(train_nv))
    assert meta["metadata"]["threshold"] == pytest.approx(median, rel=1e-12)
    assert meta["metadata"]["num_frames"] == NUM_FRAMES
    vocab = Vocabulary.load(out / "vocab.json")

    seen = set()
    for split in meta["splits"]:
        ids = [str(i) for i in dump[f"{split}/id"]]
        seen |= set(ids)
        n = len(ids)
        features, timestamps = dump[f"{split}/features"], dump[f"{split}/timestamps"]
        assert features.shape == (n, NUM_FRAMES, 2048) and features.dtype == np.float16
        assert np.isfinite(features).all() and np.abs(features).max() > 0
        assert timestamps.shape == (n, NUM_FRAMES) and timestamps.dtype == np.float32
        assert dump[f"{split}/tokens"].shape == (n, MAX_WORDS) and dump[f"{split}/tokens"].dtype == np.int32
        for k, id_ in enumerate(ids):
            video, headline, views, followers = good[id_]
            assert assign_split(id_) == split == str(dump[f"{split}/split"][k])
            assert int(dump[f"{split}/label"][k]) == int(nv[id_] > median)
            assert float(dump[f"{split}/views"][k]) == views and float(dump[f"{split}/followers"][k]) == followers
            assert float(dump[f"{split}/normalized_views"][k]) == pytest.approx(nv[id_], rel=1e-12)
            assert str(dump[f"{split}/headline"][k]) == headline
            sampled = sample_frames(corpus["root"] / video, NUM_FRAMES)
            np.testing.assert_array_equal(timestamps[k], sampled.timestamps.astype(np.float32))
            tokens, length, words = vocab.encode_headline(headline, MAX_WORDS)
            np.testing.assert_array_equal(dump[f"{split}/tokens"][k], tokens)
            assert int(dump[f"{split}/length"][k]) == length == min(len(words), MAX_WORDS)
    assert seen == set(good)
    labels = [int(nv[i] > median) for i in good if assign_split(i) == "train"]
    assert 0 < sum(labels) < len(labels)                                # both classes in train

    # The tokenizer's output is what was stored: known words get ids, the rest <unk>, padding 0.
    row = {str(i): k for k, i in enumerate(dump[f"{assign_split('clip02')}/id"])}["clip02"]
    stored = vocab.decode(dump[f"{assign_split('clip02')}/tokens"][row][:6])
    assert stored == ["the", "best", "cat", "-", "video", "<unk>"]      # cat-video split, zzqxvw unknown
    row = {str(i): k for k, i in enumerate(dump[f"{assign_split('clip04')}/id"])}["clip04"]
    assert int(dump[f"{assign_split('clip04')}/length"][row]) == 0      # empty headline


# ---------------------------------------------------------------------------------------- features
def test_features_are_the_saved_backbone_on_sampled_frames(corpus, full):
    from popjax.backbone import Backbone

    out = full["out"]
    backbone = Backbone.load(out / "backbone", batch_size=BATCH_SIZE, buckets=())   # extract's calls: full batches
    assert not backbone.metadata["pretrained"]
    examples = _all_examples(out)
    for id_ in ("clip00", "clip03", "clip08"):   # several splits and positions within a batch
        split = assign_split(id_)
        k = list(examples[split]["id"]).index(id_)
        frames = sample_frames(corpus["root"] / corpus["good"][id_][0], NUM_FRAMES).frames
        expected = backbone.features(frames).astype(np.float16)
        stored = examples[split]["features"][k]
        assert stored.dtype == np.float16 and stored.shape == (NUM_FRAMES, 2048)
        assert stored.tobytes() == expected.tobytes(), (
            id_, float(np.abs(stored.astype(np.float32) - expected.astype(np.float32)).max()))


def test_image_size_is_the_backbones_input_side(corpus, full, tmp_path):
    """``--image-size``: frames resized to it, the random backbone's same weights at that size (recorded in the
    dataset and the saved backbone); a value the network cannot take is one clear line and exit 2."""
    import jax

    from popjax.backbone import Backbone
    from popjax.weights import load_backbone

    root = corpus["root"]
    _write_csv(root / "two.csv", [["id", "video", "headline", "views", "followers"]] +
               [[i, *corpus["good"][i]] for i in ("clip00", "clip01")])
    out = tmp_path / "small"
    proc = _cli(*_extract_args(root / "two.csv", out), "--image-size", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert dataset.read_metadata(out)["image_size"] == 64
    small, meta = load_backbone(out / "backbone")
    assert meta["image_size"] == 64
    default, default_meta = load_backbone(full["out"] / "backbone")
    assert default_meta["image_size"] == 224
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), small["params"], default["params"])
    assert all(jax.tree.leaves(same))   # the same random weights; only the BN statistics are calibrated at 64 px
    backbone = Backbone.load(out / "backbone", batch_size=BATCH_SIZE, buckets=())
    examples = _all_examples(out)
    for id_ in ("clip00", "clip01"):
        split = assign_split(id_)
        k = list(examples[split]["id"]).index(id_)
        frames = sample_frames(root / corpus["good"][id_][0], NUM_FRAMES, size=64).frames
        assert frames.shape[1:3] == (64, 64)
        assert examples[split]["features"][k].tobytes() == backbone.features(frames).astype(np.float16).tobytes()

    proc = _cli(*_extract_args(root / "two.csv", tmp_path / "tiny"), "--image-size", "16")
    assert proc.returncode == 2 and "--image-size = 16" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "tiny").exists()


# ------------------------------------------------------------------------------------ two processes
# ``popjax extract`` as 2 processes on loopback (jax.distributed + gloo), one shared output directory, as on two
# hosts. Each process has the same local devices as the 1-process run (one CPU device per core), so every
# backbone call runs the same program and the features can be compared to the 1-process dataset.
def _start_two(manifest: Path, out: Path, logs: Path) -> list[subprocess.Popen]:
    port, procs = free_port(), []
    for i in range(2):   # the same command in both, but for --process-id
        with open(logs / f"process{i}.log", "ab") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "popjax.cli", *_extract_args(manifest, out),
                 "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)   # the process group: its ffmpeg children too
            p.wait()


def _wait_all(procs: list[subprocess.Popen], timeout: float = CLI_TIMEOUT) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        _kill_all(procs)


def _assert_same_extraction(out: Path, ref: Path) -> None:
    """``out`` has the dataset of ``ref`` field by field, in the same order, and the same errors and counts."""
    import tensorflow_datasets as tfds

    assert _unaddressed(out / "errors.jsonl") == _unaddressed(ref / "errors.jsonl")
    a, b = json.loads((out / "report.json").read_text()), json.loads((ref / "report.json").read_text())
    for key in ("manifest_rows", "extracted", "failed", "failed_by_reason", "splits", "popular", "threshold",
                "empty_headlines", "vocabulary", "backbone", "shards"):
        assert a[key] == b[key], key
    assert (out / "vocab.json").read_bytes() == (ref / "vocab.json").read_bytes()
    assert dataset.read_metadata(out)["threshold"] == dataset.read_metadata(ref)["threshold"]
    got = tfds.data_source(dataset.NAME, data_dir=str(out))
    want = tfds.data_source(dataset.NAME, data_dir=str(ref))
    assert sorted(got) == sorted(want)
    for split in want:
        assert len(got[split]) == len(want[split]), split
        for k in range(len(want[split])):
            x, y = got[split][k], want[split][k]
            assert x.keys() == y.keys()
            for field in y:
                if field == "features":
                    assert x[field].dtype == y[field].dtype and x[field].shape == y[field].shape
                    np.testing.assert_allclose(x[field].astype(np.float32), y[field].astype(np.float32),
                                               rtol=0, atol=1e-6, err_msg=f"{split}[{k}]")
                else:
                    np.testing.assert_array_equal(x[field], y[field], err_msg=f"{split}[{k}].{field}")


def _logs(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(logs.glob("*.log")))


def test_two_processes_one_killed_then_restarted_write_the_one_process_dataset(corpus, full, tmp_path):
    out = tmp_path / "killed"
    procs = _start_two(corpus["manifest"], out, tmp_path)
    try:   # SIGKILL process 1 once it has finished one of its shards (shard k is process k mod 2's)
        deadline = time.monotonic() + CLI_TIMEOUT
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            if any(r["process"] == 1 for r in _finished_shards(out)):
                os.killpg(procs[1].pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        assert procs[1].wait(timeout=30) == -signal.SIGKILL, _logs(tmp_path)
        # The survivor cannot finish alone (it waits for process 1 at the next barrier, or JAX stops it once
        # process 1's heartbeat is gone); a cluster scheduler would stop it too, and so does the test.
        procs[0].wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    finally:
        _kill_all(procs)
    assert not (out / "report.json").exists()
    done = {i for r in _finished_shards(out) for i in r["ids"]}
    good = set(corpus["good"])
    assert done and not good <= done, "the kill came before any shard or after the last"
    killed_mid_write = set(out.rglob(".*.tmp"))     # a SIGKILL may leave a temp file; the restart must add none

    codes = _wait_all(_start_two(corpus["manifest"], out, tmp_path))
    assert codes == [1, 1], _logs(tmp_path)          # both tell the truth: some rows were rejected
    report = json.loads((out / "report.json").read_text())
    assert report["throughput"]["processes"] == 2
    assert report["throughput"]["videos_this_run"] == len(good - done)   # finished shards are not redone
    writers = {r["shard"] for r in _finished_shards(out)}
    assert len(writers) == report["shards"] > 2       # every shard written once, by one of the two
    _assert_same_extraction(out, full["out"])          # the 1-process dataset, field by field
    assert set(out.rglob(".*.tmp")) <= killed_mid_write, "the restarted run left a file half-written"


def test_processes_that_do_not_share_the_output_directory_stop_at_once(corpus, tmp_path):
    # As on two hosts whose --out is a local directory each: process 1 cannot see what process 0 wrote.
    port, procs = free_port(), []
    for i in range(2):
        with open(tmp_path / f"process{i}.log", "wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "popjax.cli", *_extract_args(corpus["manifest"], tmp_path / f"local{i}"),
                 "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    assert _wait_all(procs, timeout=120) == [2, 2], _logs(tmp_path)
    said = [(tmp_path / f"process{i}.log").read_text() for i in range(2)]
    assert "process 1 cannot see" in said[1] and "one directory that every process sees" in said[1]
    assert "process(es) [1] stopped" in said[0]
    for text in said:
        assert "Traceback" not in text
    assert not (tmp_path / "local0" / "backbone").exists()    # stopped before any work


def test_bad_multi_process_arguments_exit_2(corpus, tmp_path):
    for extra, message in [(["--num-processes", "2"], "go together"),
                           (["--coordinator-address", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
                            "--process-id must be in 0 .. 1"),
                           (["--shard-videos", "0"], "--shard-videos must be >= 1")]:
        proc = _cli(*_extract_args(corpus["manifest"], tmp_path / "out"), *extra)
        assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], (extra, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr


def test_a_hanging_video_holds_up_only_itself(corpus, full, tmp_path):
    """Decoded videos are taken as they finish: a video whose ffmpeg never gets a byte (a FIFO nobody writes)
    times out and is reported, after every other video has been encoded, and each item says what decoded it."""
    import dataclasses

    from popjax.backbone import Backbone
    from popjax.data.manifest import read_manifest
    from popjax.extract import Settings, featurize

    rows = [r for r in sorted(read_manifest(corpus["manifest"]).rows, key=lambda r: r.id) if r.id in GOOD_IDS][:3]
    fifo = tmp_path / "hangs.mp4"
    os.mkfifo(fifo)
    rows = [dataclasses.replace(rows[0], id="hangs", video=fifo)] + rows
    backbone = Backbone.load(full["out"] / "backbone", batch_size=BATCH_SIZE, buckets=())   # 2 videos per call
    backbone.features(np.zeros((BATCH_SIZE, 224, 224, 3), np.uint8))   # compiled before the clock starts
    t0 = time.monotonic()
    items = list(featurize(rows, backbone, Settings(num_frames=NUM_FRAMES, workers=2, video_timeout=8.0)))
    assert time.monotonic() - t0 < 60
    assert [it.row.id for it in items] == [r.id for r in rows[1:]] + ["hangs"]
    assert items[-1].error.reason == "timeout"
    assert all(it.features.shape == (NUM_FRAMES, 2048) and it.decoder == "cpu" for it in items[:-1])

"""Training, evaluation and search: parallel runs, exact resume, vmapped trials, metrics, config errors,
and multimodal models built on trained encoders.

Everything runs on a small SYNTHETIC features dataset (``synthetic.py``: 200 videos, 6 frames x 2048
features, 8-word headlines, labels learnable from a visual cue and a cue word) with small models, on CPU.
One video model (``video``, trained in this process) is the reference that the other runs must reproduce:

* the same command with 4 devices (``--xla_force_host_platform_device_count=4``, a subprocess: the device
  count is fixed when JAX starts), and with two processes on loopback (``jax.distributed`` + gloo, one
  shared work directory), give the same metrics and, to float tolerance, the same best parameters;
* a ``train.py`` run SIGKILLed after its first checkpoint and restarted gives exactly the same metrics
  and best parameters;
* ``search.run_trials`` (trials sharing shapes vmapped together) equals training each trial alone.

Then: metrics against numpy/scipy, clear errors for bad configurations, and multimodal runs on the trained
video and headline models (encoders plugged in and frozen, or fine-tuned).
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import scipy.stats

from popjax import experiment, metrics, search, training
from popjax.trained import load_model
from synthetic import REPO, SMALL, config_file, free_port, load_config, write_features

TIMEOUT = 240
# Metrics that must agree between runs (``seconds`` and the device/process counts may not).
COMPARED = ("val", "test", "selected_seed", "best_epoch", "seeds", "hparams", "epochs_run", "backbone")


# ---------------------------------------------------------------------------------------------- helpers
def train_args(name: str, workdir, features, **overrides) -> list[str]:
    """The ``train.py`` command line of ``load_config(name, features, **overrides)``."""
    path, arg = config_file(name)
    args = [sys.executable, str(REPO / "train.py"), f"--config={path}{':' + arg if arg else ''}", f"--workdir={workdir}"]
    for key, value in {**SMALL, "data.features": str(features), **overrides}.items():
        args.append(f"--config.{key}={value}")
    return args


def env(**extra) -> dict:
    """Subprocess environment: one CPU device per process unless a test asks for more (train.py would
    otherwise make one device per core)."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **extra}


def run_ok(args, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)
    assert proc.returncode == 0, f"{args[:4]} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


def read_metrics(workdir) -> dict:
    return json.loads((Path(workdir) / "metrics.json").read_text())


def best_variables(workdir) -> tuple[dict, dict]:
    _, variables, info = load_model(workdir)
    return variables, info


def leaves(tree) -> dict:
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(tree)}


# b_a of the two-layer attention (a_i = W_a u_i + b_a) shifts every logit of a softmax alike: its gradient is
# zero in exact arithmetic, so what Adam does with it is normalised rounding noise (steps of about the learning
# rate, in a direction that depends on the order of float sums). The model's outputs do not depend on it.
SOFTMAX_INVARIANT = "['W_a']['bias']"


def assert_trees_equal(a, b, atol: float = 0.0):
    """Same structure, shapes and dtypes; values bit for bit (atol=0) or to ``atol`` (then without the
    softmax-invariant biases, whose values are rounding noise)."""
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    for k in la:
        if atol and k.endswith(SOFTMAX_INVARIANT):
            continue
        assert la[k].shape == lb[k].shape and la[k].dtype == lb[k].dtype, k
        if atol == 0.0:
            assert np.array_equal(la[k], lb[k]), f"{k} differs: max |diff| {np.max(np.abs(la[k] - lb[k]))}"
        else:
            np.testing.assert_allclose(la[k], lb[k], rtol=0, atol=atol, err_msg=k)


def same_number(a, b, rel: float) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if rel == 0.0 or not isinstance(a, float):
        return a == b
    return math.isclose(a, b, rel_tol=rel, abs_tol=rel)


def assert_metrics_equal(got: dict, want: dict, rel: float = 0.0):
    """The COMPARED entries of two metrics.json: exactly (rel=0), or Spearman to ``rel``."""
    def walk(x, y, where):
        if isinstance(y, dict):
            assert isinstance(x, dict) and x.keys() == y.keys(), where
            for k in y:
                walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(y, list):
            assert isinstance(x, list) and len(x) == len(y), where
            for i, (xi, yi) in enumerate(zip(x, y)):
                walk(xi, yi, f"{where}[{i}]")
        else:
            tol = rel if "spearman" in where else 0.0
            assert same_number(x, y, tol), f"{where}: {x!r} != {y!r}"

    for key in COMPARED:
        walk(got[key], want[key], key)


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return write_features(tmp_path_factory.mktemp("synthetic"))["features"]


@pytest.fixture(scope="module")
def video(features, tmp_path_factory):
    """The reference run: video + attention, 2 seeds, trained in this (1-device) process."""
    assert jax.device_count() == 1
    workdir = tmp_path_factory.mktemp("runs") / "video"
    summary = experiment.train_and_evaluate(load_config("video_attention", features), workdir)
    return workdir, summary


@pytest.fixture(scope="module")
def headline(features, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "headline"
    summary = experiment.train_and_evaluate(load_config("headline_attention", features), workdir)
    return workdir, summary


# ----------------------------------------------------------------------------------- reference sanity
def test_every_trial_has_tensorboard_curves_equal_to_its_log(video):
    """The event files, read back with TensorBoard's own reader, hold each trial's per-epoch loss, validation
    accuracy and Spearman exactly as log.jsonl records them; curves.png is drawn."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir, _ = video
    log = [json.loads(line) for line in (workdir / "log.jsonl").read_text().splitlines()]
    runs = sorted(p.name for p in (workdir / "tensorboard").iterdir())
    assert runs == ["trial_00", "trial_01"]   # the two seeds
    for t, run in enumerate(runs):
        events = EventAccumulator(str(workdir / "tensorboard" / run))
        events.Reload()
        assert set(events.Tags()["scalars"]) == {"train/loss", "val/accuracy", "val/spearman"}
        for tag, key in (("train/loss", "train_loss"), ("val/accuracy", "val_accuracy"),
                         ("val/spearman", "val_spearman")):
            got = [(e.step, e.value) for e in events.Scalars(tag)]
            want = [(r["epoch"], np.float32(r[key][t])) for r in log if not math.isnan(r[key][t])]  # NaN: no point
            assert got == want, (run, tag)
    with Image.open(workdir / "curves.png") as png:
        assert png.format == "PNG" and png.size[0] > 600


def test_reference_run_learns_and_writes_its_outputs(video):
    workdir, summary = video
    m = read_metrics(workdir)
    assert_metrics_equal(m, json.loads(json.dumps(summary)))
    assert m["devices"] == 1 and m["processes"] == 1 and m["epochs_run"] == 6
    assert m["val"]["n"] + m["test"]["n"] > 0 and m["seeds"]["seed"] == [0, 1]
    # The synthetic label is learnable from the frames: well above chance on held-out videos.
    assert m["val"]["accuracy"] > 0.7 and m["test"]["accuracy"] > 0.6 and m["test"]["spearman"] > 0.4
    variables, info = best_variables(workdir)
    assert info["best_epoch"] == m["best_epoch"] and info["hparams"]["seed"] == m["selected_seed"]
    assert info["val"] == m["val"] and info["test"] == m["test"]
    assert set(variables["params"]) == {"video_encoder", "head"}
    log = [json.loads(line) for line in (workdir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------- 1. several devices, one process
@pytest.mark.slow
def test_four_devices_equal_one_device(video, features, tmp_path):
    ref_dir, _ = video
    workdir = tmp_path / "four"
    run_ok(train_args("video_attention", workdir, features),
           env=env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    got, want = read_metrics(workdir), read_metrics(ref_dir)
    assert got["devices"] == 4 and got["processes"] == 1
    # The gradient sum over 4 shards is reduced in another order: the same to float rounding.
    assert_metrics_equal(got, want, rel=1e-6)
    assert_trees_equal(best_variables(workdir)[0], best_variables(ref_dir)[0], atol=1e-5)
    # config.train.devices picks the first n of them.
    two = tmp_path / "two"
    run_ok(train_args("video_attention", two, features, **{"train.devices": 2}),
           env=env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert read_metrics(two)["devices"] == 2
    assert_metrics_equal(read_metrics(two), want, rel=1e-6)


# --------------------------------------------------------------------- 2. two processes, one shared workdir
@pytest.mark.slow
def test_two_processes_on_loopback_equal_one_process(video, features, tmp_path):
    ref_dir, _ = video
    workdir = tmp_path / "two"  # one work directory for both, as on hosts sharing a filesystem
    port = free_port()
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    procs = []
    try:
        for i in range(2):  # the same command in both, as on two hosts
            with open(logs[i], "w") as log:
                procs.append(subprocess.Popen(train_args("video_attention", workdir, features) + [
                    f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                    cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT))
        codes = [p.wait(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i in range(2):
        assert codes[i] == 0, f"process {i} exited {codes[i]}:\n{logs[i].read_text()[-4000:]}"
    got, want = read_metrics(workdir), read_metrics(ref_dir)
    assert got["devices"] == 2 and got["processes"] == 2
    assert_metrics_equal(got, want, rel=1e-6)
    assert_trees_equal(best_variables(workdir)[0], best_variables(ref_dir)[0], atol=1e-5)
    assert not list(workdir.glob(".*.tmp")), "a plain file was left half-written"
    assert len((workdir / "log.jsonl").read_text().splitlines()) == 6  # written by process 0 only


# ---------------------------------------------------------------------------------- 3. kill and resume
def _finished_checkpoints(workdir: Path) -> list[int]:
    latest = workdir / "checkpoints" / "latest"
    return sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit()) if latest.is_dir() else []


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(video, features, tmp_path):
    ref_dir, _ = video
    workdir = tmp_path / "killed"
    args = train_args("video_attention", workdir, features)
    proc = subprocess.Popen(args, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + TIMEOUT
    try:
        while not _finished_checkpoints(workdir) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = _finished_checkpoints(workdir)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{proc.stderr.read()}"
    assert done and done[-1] < 6 and not (workdir / "metrics.json").exists()
    logged = len((workdir / "log.jsonl").read_text().splitlines())

    run_ok(args, env=env())  # the same command again
    # It resumed from the last finished checkpoint (no epoch before it was trained again) ...
    resumed = [json.loads(line)["epoch"] for line in (workdir / "log.jsonl").read_text().splitlines()[logged:]]
    assert resumed == list(range(done[-1] + 1, 7))
    # ... and ended exactly where the uninterrupted run did.
    got = read_metrics(workdir)
    assert_metrics_equal(got, read_metrics(ref_dir))  # exactly
    assert got["epochs_run"] == 6
    (got_vars, got_info), (ref_vars, ref_info) = best_variables(workdir), best_variables(ref_dir)
    assert_trees_equal(got_vars, ref_vars)  # bit for bit
    assert got_info["best_epoch"] == ref_info["best_epoch"]



def test_checkpoints_are_spaced_in_time_and_the_last_epoch_is_kept(features, tmp_path):
    """``checkpoint_every_secs``: the first epoch, then none until that long after, and always the last epoch;
    a rerun of a finished fit trains nothing and returns the same result."""
    data = experiment.load_data(features, "video")
    static = {"modality": "video", "frame_pooling": "mean", "headline_pooling": "last", "frame_embed_dim": 8,
              "frame_attention_dim": 8, "lstm_hidden": 8, "word_attention_dim": 8, "head_hidden": 8,
              "batch_norm": False}
    trial = {"learning_rate": 1e-2, "weight_decay": 1e-4, "input_dropout": 0.0, "dropout": 0.0, "seed": 0}
    saved = []
    kwargs = dict(vocab_size=data["vocab_size"], word_dim=data["word_dim"], constants=data["constants"],
                  train_cfg={"batch_size": 16, "num_epochs": 5, "patience": 5, "checkpoint_every_secs": 3600},
                  workdir=tmp_path, log=lambda r: saved.append(_finished_checkpoints(tmp_path)))
    first = training.fit(data["splits"], static, [trial], **kwargs)
    assert first.epochs_run == 5
    # Before the last epoch's save, at most epoch 1's checkpoint (written asynchronously) exists: no second
    # save within the hour ...
    assert all(done in ([], [1]) for done in saved), saved
    # ... and the last epoch was saved whatever the interval.
    assert _finished_checkpoints(tmp_path) == [5]
    saved.clear()
    again = training.fit(data["splits"], static, [trial], **kwargs)
    assert saved == [] and again.epochs_run == 5 and again.val == first.val and again.test == first.test

# ------------------------------------------------------------------ 4. vmapped search == trials one by one
# With batch norm, the bias of the Dense layer in front of it is a second parameter with an exactly-zero
# gradient (BN subtracts the batch mean), and the running mean integrates that bias: both are rounding noise.
BN_INVARIANT = ("['head']['hidden']['bias']", "['head']['bn']['mean']")
STATIC = ("modality", "frame_pooling", "headline_pooling", "frame_embed_dim", "frame_attention_dim", "lstm_hidden",
          "word_attention_dim", "head_hidden", "batch_norm")   # configs/default.py's config.model fields


@pytest.mark.slow
def test_vmapped_trials_equal_trials_trained_alone(features):
    data = experiment.load_data(features, "video")
    base = {"modality": "video", "frame_pooling": "attention", "headline_pooling": "attention",
            "frame_embed_dim": 16, "frame_attention_dim": 8, "lstm_hidden": 8, "word_attention_dim": 8,
            "head_hidden": 16, "batch_norm": False, "learning_rate": 1e-2, "weight_decay": 1e-4,
            "input_dropout": 0.1, "dropout": 0.3, "seed": 0}
    space = {"learning_rate": ("log_uniform", 3e-3, 3e-2), "weight_decay": ("log_uniform", 1e-5, 1e-3),
             "dropout": ("uniform", 0.0, 0.5), "seed": ("choice", 0, 1, 2, 3)}
    trials = search.sample_trials(base, space, 3, seed=0)
    assert search.sample_trials(base, space, 3, seed=0) == trials  # reproducible draws
    assert len({(t["learning_rate"], t["dropout"]) for t in trials}) == 3
    # Two more trials of another shape (their own program), with batch norm: per-trial batch statistics.
    trials += [{**t, "head_hidden": 8, "batch_norm": True} for t in trials[:2]]
    groups = search.group_by_shape(trials, STATIC)
    assert [idx for _, idx in groups] == [[0, 1, 2], [3, 4]]

    kwargs = dict(vocab_size=data["vocab_size"], word_dim=data["word_dim"], constants=data["constants"],
                  train_cfg={"batch_size": 16, "num_epochs": 4, "warmup_epochs": 1, "data_seed": 0})
    results = search.run_trials(trials, data["splits"], static_keys=STATIC, **kwargs)
    together = [training.fit(data["splits"], static, [trials[i] for i in idx], **kwargs) for static, idx in groups]
    for i, trial in enumerate(trials):
        alone = training.fit(data["splits"], search.static_part(trial, STATIC), [trial], **kwargs)
        g, t = (0, i) if i < 3 else (1, i - 3)
        r = results[i]
        assert r["trial"] == trial and r["val"] == together[g].val[t] and r["test"] == together[g].test[t]
        assert r["best_epoch"] == together[g].best_epoch[t] == alone.best_epoch[0], i
        got, want = together[g].trial_variables(t), alone.trial_variables(0)
        if not trial["batch_norm"]:
            for split, m in (("val", alone.val[0]), ("test", alone.test[0])):
                assert r[split]["accuracy"] == m["accuracy"], (i, split)
                assert math.isclose(r[split]["spearman"], m["spearman"], rel_tol=1e-6, abs_tol=1e-6), (i, split)
            assert_trees_equal(got, want, atol=1e-5)
        else:
            # Evaluation uses the running mean, which carries the noise of the BN-invariant bias: the same
            # predictions to ~1e-4, so metrics may differ by a borderline video at most.
            for split, m in (("val", alone.val[0]), ("test", alone.test[0])):
                assert abs(r[split]["accuracy"] - m["accuracy"]) <= 1.01 / m["n"], (i, split)
                assert abs(r[split]["spearman"] - m["spearman"]) < 0.02, (i, split)
            lg, lw = leaves(got), leaves(want)
            for k in lg:
                if not k.endswith((SOFTMAX_INVARIANT,) + BN_INVARIANT):
                    np.testing.assert_allclose(lg[k], lw[k], rtol=1e-3, atol=1e-4, err_msg=f"trial {i} {k}")
    # The vmapped trials really differ (not one model three times).
    p = [leaves(together[0].trial_variables(t)["params"]) for t in range(3)]
    assert not np.allclose(p[0]["['head']['logits']['kernel']"], p[1]["['head']['logits']['kernel']"])
    assert search.best_trial(results) in trials


@pytest.mark.slow
def test_headlines_trimmed_to_the_longest_train_the_same_model(features):
    data = experiment.load_data(features, "headline")
    splits = data["splits"]
    longest = max(int(s["lengths"].max()) for s in splits.values())
    assert all(s["tokens"].shape[1] == longest for s in splits.values())
    padded = {k: {**s, "tokens": np.pad(s["tokens"], ((0, 0), (0, 9)))} for k, s in splits.items()}
    trial = {"modality": "headline", "frame_pooling": "attention", "headline_pooling": "attention",
             "frame_embed_dim": 16, "frame_attention_dim": 8, "lstm_hidden": 8, "word_attention_dim": 8,
             "head_hidden": 16, "batch_norm": False, "learning_rate": 1e-2, "weight_decay": 1e-4,
             "input_dropout": 0.1, "dropout": 0.3, "seed": 0}
    kwargs = dict(vocab_size=data["vocab_size"], word_dim=data["word_dim"], constants=data["constants"],
                  train_cfg={"batch_size": 16, "num_epochs": 3, "warmup_epochs": 1, "data_seed": 0})
    short, long_ = (training.fit(d, search.static_part(trial, STATIC), [trial], **kwargs) for d in (splits, padded))
    assert short.best_epoch == long_.best_epoch and short.val[0]["accuracy"] == long_.val[0]["accuracy"]
    assert math.isclose(short.test[0]["spearman"], long_.test[0]["spearman"], rel_tol=1e-5, abs_tol=1e-6)
    assert_trees_equal(short.trial_variables(0), long_.trial_variables(0), atol=1e-5)


# ------------------------------------------------------------------------------------------- 5. metrics
def test_accuracy_matches_numpy():
    p = np.array([0.1, 0.5, 0.51, 0.9, 0.49, 0.7])
    y = np.array([0, 1, 1, 1, 0, 0])
    assert metrics.accuracy(p, y) == np.mean((p > 0.5) == y) == 4 / 6  # 0.5 is not popular
    assert metrics.accuracy(np.ones(4), np.ones(4, int)) == 1.0
    assert math.isnan(metrics.accuracy([], []))


@pytest.mark.parametrize("p, v", [
    ([0.1, 0.4, 0.35, 0.8, 0.9], [1.0, 3.0, 2.0, 10.0, 7.0]),
    ([0.2, 0.2, 0.5, 0.7, 0.7, 0.1], [5.0, 1.0, 1.0, 3.0, 9.0, 9.0]),      # ties on both sides
    (np.random.default_rng(0).random(50), np.random.default_rng(1).lognormal(size=50)),
])
def test_spearman_matches_scipy(p, v):
    want = scipy.stats.spearmanr(p, v).statistic
    assert metrics.spearman(p, v) == pytest.approx(want, abs=1e-12)
    m = metrics.evaluate(p, (np.asarray(v) > np.median(v)).astype(int), v)
    assert m["n"] == len(v) and m["spearman"] == metrics.spearman(p, v)


def test_spearman_of_constant_or_short_inputs_is_nan():
    assert math.isnan(metrics.spearman([0.5, 0.5, 0.5], [1.0, 2.0, 3.0]))
    assert math.isnan(metrics.spearman([0.1, 0.2, 0.3], [4.0, 4.0, 4.0]))
    assert math.isnan(metrics.spearman([0.3], [1.0]))
    assert math.isnan(metrics.spearman([], []))
    # NaN ranks worst when selecting on validation.
    assert metrics.selection_key({"accuracy": 0.6, "spearman": math.nan}) < \
        metrics.selection_key({"accuracy": 0.6, "spearman": -0.9})


# ---------------------------------------------------------------------------------------- 6. bad configs
@pytest.mark.parametrize("overrides, error, message", [
    ({"model.modality": "audio"}, ValueError, r"modality = 'audio'"),
    ({"model.frame_pooling": "max"}, ValueError, r"frame_pooling = 'max'"),
    ({"model.modality": "headline", "model.headline_pooling": "max"}, ValueError, r"headline_pooling = 'max'"),
    ({"data.features": ""}, ValueError, r"config\.data\.features is empty"),
    ({"search.num_trials": 2, "search.space": {"learning_rate": ("normal", 1e-3, 1e-2)}}, ValueError,
     r"search space entry 'learning_rate': unknown kind 'normal'"),
    ({"train.devices": 5}, ValueError, r"config\.train\.devices = 5: this run has 1 devices"),
    ({"train.batch_size": 0}, ValueError, r"config\.train\.batch_size = 0: expected a number >= 1"),
    ({"train.num_epochs": -3}, ValueError, r"config\.train\.num_epochs = -3: expected a number >= 1"),
    ({"train.cpu_opt_level": 7}, ValueError, r"config\.train\.cpu_opt_level = 7: expected 0, 1, 2 or 3"),
    ({"model.frame_embed_size": 64}, ValueError, r"config\.model\.frame_embed_size: no module of popjax\.models"),
    ({"hparams.momentum": 0.9}, ValueError, r"config\.hparams\.momentum: no module of popjax\.models"),
    ({"hparams.batch_norm": True}, ValueError, r"config\.hparams\.batch_norm = True: expected a number"),
    ({"search.num_trials": 2, "search.space": {"learning_rat": ("log_uniform", 1e-3, 1e-2)}}, ValueError,
     r"config\.search\.space: \['learning_rat'\] are neither config\.model nor config\.hparams fields"),
    ({"data.features": "/nonexistent/popjax-features"}, FileNotFoundError,
     r"/nonexistent/popjax-features: no popjax features dataset"),
])
def test_bad_configs_fail_with_a_clear_message(features, tmp_path, overrides, error, message):
    config = load_config("video_attention", features)
    for key, value in overrides.items():
        section, leaf = key.split(".")
        config[section][leaf] = value
    with pytest.raises(error, match=message):
        experiment.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before training anything



@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ({"train.batch_size": 0}, "config.train.batch_size = 0: expected a number >= 1"),
    ({"data.features": "/nonexistent/popjax-features"}, "/nonexistent/popjax-features: no popjax features"),
    ({"train.batchsize": 8}, "--config.train.batchsize: no such config field 'batchsize' (Did you mean \"batch_size\""),
    ({"model.frame_pooling_kind": "mean"}, "--config.model.frame_pooling_kind: no such config field"),
    ({"train.num_epochs": "many"}, "--config.train.num_epochs=many: invalid literal for int()"),
])
def test_train_py_answers_a_bad_config_with_one_line_and_exit_2(features, tmp_path, override, message):
    proc = subprocess.run(train_args("video_attention", tmp_path / "run", features, **override), cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()

def test_unknown_table1_variant_fails_before_training(features, tmp_path):
    config = load_config("table1", features)
    config.table1.variants = ("video_mean", "headline_transformer")
    with pytest.raises(ValueError, match=r"unknown Table-1 row.*'headline_transformer'"):
        experiment.table1(config, tmp_path)
    assert not (tmp_path / "video_mean").exists()


def test_search_space_errors():
    with pytest.raises(ValueError, match=r"'dropout': unknown kind 'gauss'"):
        search.sample_trials({}, {"dropout": ("gauss", 0.0, 1.0)}, 1, seed=0)
    with pytest.raises(ValueError, match=r"'learning_rate': 'log_uniform' needs \(low, high\)"):
        search.sample_trials({}, {"learning_rate": ("log_uniform", 1e-3)}, 1, seed=0)


@pytest.mark.slow
def test_train_py_batch_not_divisible_by_devices(features, tmp_path):
    proc = subprocess.run(train_args("video_mean", tmp_path / "run", features, **{"train.batch_size": 10}),
                          cwd=REPO, env=env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "batch_size 10 must be a multiple of the number of devices (4)" in proc.stderr


# ---------------------------------------------------------------------- 7. multimodal on trained encoders
@pytest.mark.slow
def test_multimodal_plugs_the_trained_encoders(video, headline, features, tmp_path):
    (video_dir, _), (headline_dir, _) = video, headline
    trained = {"video_encoder": best_variables(video_dir)[0]["params"]["video_encoder"],
               "headline_encoder": best_variables(headline_dir)[0]["params"]["headline_encoder"]}
    constants = {**best_variables(video_dir)[0]["constants"], **best_variables(headline_dir)[0]["constants"]}
    runs = {}
    for finetune in (False, True):
        config = load_config("multimodal_attention", features, **{
            "multimodal.video_workdir": str(video_dir), "multimodal.headline_workdir": str(headline_dir),
            "multimodal.finetune": finetune, "train.num_epochs": 3, "train.num_seeds": 1})
        workdir = tmp_path / f"finetune_{finetune}"
        summary = experiment.train_and_evaluate(config, workdir)
        variables, info = best_variables(workdir)
        assert set(variables["params"]) == {"video_encoder", "headline_encoder", "head"}
        assert_trees_equal(variables["constants"], constants)  # same word vectors and feature statistics
        assert info["static"]["frame_pooling"] == info["static"]["headline_pooling"] == "attention"
        assert not (workdir / "encoders").exists()  # the given workdirs were used, nothing retrained
        runs[finetune] = variables["params"], summary
    frozen_params, _ = runs[False]
    finetuned_params, _ = runs[True]
    for name, subtree in trained.items():
        assert_trees_equal(frozen_params[name], subtree)  # plugged in and left alone, bit for bit
        changed = [k for k, x in leaves(finetuned_params[name]).items() if not np.array_equal(x, leaves(subtree)[k])]
        assert changed, f"finetune=True left {name} untouched"
    assert not np.array_equal(leaves(frozen_params["head"])["['logits']['kernel']"],
                              leaves(finetuned_params["head"])["['logits']['kernel']"])

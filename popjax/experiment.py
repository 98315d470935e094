"""Experiments: one configuration into a work directory, and the paper's Table 1 (six variants).

``train_and_evaluate(config, workdir)`` (what ``python train.py --config configs/NAME.py`` runs):
features dataset -> optional random search on validation -> the chosen hyperparameters trained with
several seeds (vmapped) -> the best-validation seed is the run's model (``checkpoints/best``) ->
``metrics.json`` with its validation and test accuracy and Spearman, and the mean/std over seeds.

Multimodal runs use *trained* unimodal encoders (paper: "We concatenate previously trained video and text
embeddings"): from ``config.multimodal.{video,headline}_workdir``, or trained first under
``workdir/encoders/`` when those are empty. Only the head is trained unless ``config.multimodal.finetune``.
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from popjax import curves, files, metrics, models, parallel, search, training
from popjax import study as study_lib
from popjax.trained import load_model, save_model
from popjax.data import dataset



# --------------------------------------------------------------------------------------------- data
def load_data(features_dir, modality: str, frames="all", word_vectors: str = "") -> dict:
    """Splits as model inputs, the model's constants (word vectors, feature statistics) and the dataset's
    metadata. ``frames``: which of the stored frames the model sees (``frame_indices``); ``word_vectors``: a
    ``glove.*.txt`` file that re-embeds the dataset's vocabulary in place of its own vectors (empty: its own)."""
    features_dir = Path(features_dir)
    meta = dataset.read_metadata(features_dir)
    data = {}
    for split in dataset.SPLITS:
        arrays = dataset.load_split(features_dir, split)
        if not arrays:
            raise ValueError(f"{features_dir}: the {split!r} split is empty; training needs train, val and test")
        data[split] = training.model_inputs(arrays, modality)
    seen = frame_indices(frames, meta["num_frames"], meta["seconds"])
    if modality != "headline" and len(seen) < meta["num_frames"]:
        for split in data.values():
            split["features"] = split["features"][:, seen]
    if modality != "video":
        trim_headlines(data)
    vectors = np.load(features_dir / meta["word_vectors"], allow_pickle=False)
    if word_vectors:
        vectors = reembed(features_dir / meta["vocab"], word_vectors)
    constants = {}
    if modality != "headline":
        constants["feature_norm"] = feature_statistics(data["train"]["features"])
    if modality != "video":
        constants["headline_encoder"] = {"word_vectors": vectors}
    return {"splits": data, "meta": meta, "constants": constants, "vocab_size": int(vectors.shape[0]),
            "word_dim": int(vectors.shape[1]), "frames": [int(i) for i in seen]}


def frame_indices(spec, num_frames: int, seconds: float) -> np.ndarray:
    """The stored frames a model sees, of the ``num_frames`` sampled evenly over the first ``seconds``:
    ``"all"``; ``"first:K"`` (or the number K): the first K; ``"every:M"``: frames 0, M, 2M, ...;
    ``"seconds:S"``: those sampled within the first S seconds (their target times (i + 1/2) * seconds / N)."""
    text = str(spec).strip()
    kind, _, value = text.rpartition(":")
    kind = kind or ("all" if value == "all" else "first")
    try:
        if kind == "all":
            return np.arange(num_frames)
        if kind == "first" and 1 <= int(value) <= num_frames:
            return np.arange(int(value))
        if kind == "every" and 1 <= int(value) <= num_frames:
            return np.arange(0, num_frames, int(value))
        if kind == "seconds" and float(value) > 0:
            return np.flatnonzero((np.arange(num_frames) + 0.5) * (seconds / num_frames) < float(value))
    except ValueError:
        pass
    raise ValueError(f"frames {spec!r}: expected 'all', 'first:K' (1 <= K <= {num_frames}), 'every:M' "
                     f"(1 <= M <= {num_frames}) or 'seconds:S' (S > 0)")


def reembed(vocab_path, glove_path) -> np.ndarray:
    """The embedding matrix of a dataset's vocabulary from another ``glove.*.txt`` file: row i = the vector of
    word i there, zero rows for <pad>, <unk> and the words that file lacks."""
    from popjax.data.text import Vocabulary, WordVectors

    vocab = Vocabulary.load(vocab_path)
    return vocab.embedding_matrix(WordVectors.load(glove_path, words=vocab.itos[2:]), missing_ok=True)


def trim_headlines(splits: Mapping[str, dict]) -> int:
    """Cut the token arrays of every split (in place) to the corpus's longest headline instead of
    ``max_words``; returns that length T.

    The biLSTM's cost grows with T (demo: 32 -> 10), while its outputs do not depend on padding (lengths are
    exact in both directions, attention masks it), so the models are the same up to float rounding.
    """
    longest = max(int(np.max(s["lengths"], initial=0)) for s in splits.values())
    for s in splits.values():
        s["tokens"] = s["tokens"][:, :max(1, longest)]
    return max(1, longest)


def feature_statistics(features: np.ndarray, eps: float = 1e-6) -> dict:
    """Per-channel mean and standard deviation of the training split's frame features."""
    f = np.asarray(features, np.float32).reshape(-1, features.shape[-1])
    return {"mean": f.mean(0), "std": np.sqrt(f.var(0) + eps)}


# ---------------------------------------------------------------------------------------- one config
def train_and_evaluate(config, workdir) -> dict:
    """Train and evaluate one configuration (see module docstring); returns what ``metrics.json`` holds."""
    t_start = time.time()
    check_config(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    publish(workdir / "config.json", config.to_dict())
    modality = config.model.modality
    data = load_data(config.data.features, modality, config.data.frames, config.data.word_vectors)
    if config.learner == "gbdt":
        return _gbdt(config, workdir, data, t_start)
    fit_kwargs = dict(vocab_size=data["vocab_size"], word_dim=data["word_dim"], constants=data["constants"],
                      train_cfg=config.train.to_dict(), progress=config.get("progress", True))
    base = {**config.model.to_dict(), **config.hparams.to_dict(), "seed": config.train.first_seed}
    static_keys = tuple(config.model.keys())

    encoders, freeze = None, ()
    if modality == "multimodal":
        encoders, fixed = _trained_encoders(config, workdir)
        base.update(fixed)
        freeze = () if config.multimodal.finetune else training.ENCODERS

    chosen = base
    if config.search.num_trials > 0:
        chosen = _search(config, workdir, base, data, encoders, freeze, fit_kwargs,
                         fixed=fixed if encoders else {}, static_keys=static_keys)
    seeds = [{**chosen, "seed": config.train.first_seed + k} for k in range(config.train.num_seeds)]
    static = search.static_part(chosen, static_keys)
    fit = training.fit(data["splits"], static, seeds, workdir=workdir,
                       encoders=encoders, freeze=freeze,
                       log=_logger(workdir / "log.jsonl"), **fit_kwargs)
    t = fit.select()
    variables = {**fit.trial_variables(t), "constants": data["constants"]}
    info = {"static": static, "hparams": seeds[t], "vocab_size": data["vocab_size"],
            "word_dim": data["word_dim"], "features": str(Path(config.data.features).absolute()),
            "backbone": data["meta"].get("backbone"), "val": fit.val[t], "test": fit.test[t],
            "best_epoch": fit.best_epoch[t], "frames": data["frames"], "word_vectors": config.data.word_vectors}
    save_model(workdir, variables, info, step=fit.best_epoch[t])
    summary = {
        "val": fit.val[t], "test": fit.test[t], "selected_seed": seeds[t]["seed"], "best_epoch": fit.best_epoch[t],
        "seeds": _seed_summary(seeds, fit.val, fit.test), "hparams": seeds[t], "epochs_run": fit.epochs_run,
        "devices": fit.devices, "processes": jax.process_count(),
        "backbone": data["meta"].get("backbone"), "seconds": round(time.time() - t_start, 1)}
    _publish_predictions(workdir, fit.p_test)
    publish(workdir / "metrics.json", summary)
    if jax.process_index() == 0:
        curves.plot(fit.history, workdir / "curves.png", title=f"{workdir.name}: {len(seeds)} seeds")
    return summary


LEARNERS = ("neural", "gbdt")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field and what it accepts."""


def check_config(config) -> None:
    """Fail fast, before any data is read or anything trained, on settings that cannot work (``ConfigError``)."""
    m = config.model
    known = models.model_settings()
    for section, allowed in (("model", known), ("hparams", known | set(training.OPTIMIZER_SETTINGS))):
        for field in config[section].keys():
            if field not in allowed:
                raise ConfigError(f"config.{section}.{field}: no module of popjax.models (nor the optimizer) takes "
                                  f"this setting; known: {sorted(allowed)}")
    for field, value in config.hparams.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config.hparams.{field} = {value!r}: expected a number (trials are vmapped over "
                              "hparams; settings that change the model's structure go in config.model)")
    if m.modality not in models.MODALITIES:
        raise ConfigError(f"config.model.modality = {m.modality!r}: unknown modality; expected one of "
                          f"{models.MODALITIES}")
    if m.modality != "headline" and m.frame_pooling not in models.FRAME_POOLINGS:
        raise ConfigError(f"config.model.frame_pooling = {m.frame_pooling!r}: unknown frame pooling; "
                          f"expected one of {tuple(models.FRAME_POOLINGS)}")
    if m.modality != "video" and m.headline_pooling not in models.HEADLINE_POOLINGS:
        raise ConfigError(f"config.model.headline_pooling = {m.headline_pooling!r}: unknown headline pooling; "
                          f"expected one of {models.HEADLINE_POOLINGS}")
    if config.learner not in LEARNERS:
        raise ConfigError(f"config.learner = {config.learner!r}: expected one of {LEARNERS}")
    if config.learner == "gbdt":
        from popjax import gbdt

        try:
            gbdt.check_params(config.gbdt)
            if config.search.num_trials > 0:
                search.check_space(config.gbdt_space.to_dict())
        except ValueError as e:
            raise ConfigError(str(e)) from None
        stray = sorted(set(config.gbdt_space.keys()) - set(config.gbdt.keys()))
        if stray and config.search.num_trials > 0:
            raise ConfigError(f"config.gbdt_space: {stray} are not config.gbdt fields")
    if not config.data.features:
        raise ConfigError("config.data.features is empty: point it at a dataset made by `popjax extract`")
    if config.data.word_vectors and not Path(config.data.word_vectors).is_file():
        raise ConfigError(f"config.data.word_vectors = {config.data.word_vectors!r}: no such file")
    try:   # the frames against the dataset's, where its metadata can be read (a missing one: reported later)
        meta = dataset.read_metadata(config.data.features)
    except (FileNotFoundError, ValueError):
        meta = {"num_frames": 1 << 30, "seconds": 1.0}
    try:
        frame_indices(config.data.frames, meta["num_frames"], meta["seconds"])
    except ValueError as e:
        raise ConfigError(f"config.data.frames: {e}") from None
    t = config.train
    for field, low in (("batch_size", 1), ("num_epochs", 1), ("num_seeds", 1), ("patience", 1),
                       ("warmup_epochs", 0), ("checkpoint_every_secs", 0), ("devices", 0)):
        value = t.get(field, low)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            raise ConfigError(f"config.train.{field} = {value!r}: expected a number >= {low}")
    if t.get("cpu_opt_level", 2) not in (0, 1, 2, 3):
        raise ConfigError(f"config.train.cpu_opt_level = {t.cpu_opt_level!r}: expected 0, 1, 2 or 3")
    if config.search.num_trials < 0:
        raise ConfigError(f"config.search.num_trials = {config.search.num_trials!r}: expected a number >= 0")
    try:
        if config.search.num_trials > 0:
            search.check_space(config.search.space.to_dict())
            stray = sorted(set(config.search.space.keys()) - set(config.model.keys()) - set(config.hparams.keys()))
            if stray:
                raise ValueError(f"config.search.space: {stray} are neither config.model nor config.hparams fields")
        parallel.training_mesh(t.get("devices", 0))   # raises on an impossible device count
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _trained_encoders(config, workdir) -> tuple[dict, dict]:
    """Encoder parameter subtrees from the trained unimodal models, and the settings they fix."""
    sources = {}
    for kind in ("video", "headline"):
        src = config.multimodal.get(f"{kind}_workdir") or ""
        if not src:  # train the unimodal model first, as the paper does
            src = workdir / "encoders" / kind
            if not (Path(src) / "metrics.json").is_file():
                sub = config.copy_and_resolve_references()
                sub.model.modality = kind
                sub.search.num_trials = 0
                train_and_evaluate(sub, src)
        sources[kind] = src
    encoders, fixed = {}, {}
    for kind in ("video", "headline"):
        _, variables, info = load_model(sources[kind])
        name = f"{kind}_encoder"
        encoders[name] = variables["params"].get(name, {})
        fixed.update({k: v for k, v in info["static"].items() if k in models.encoder_settings(kind)})
    return encoders, fixed


def _search(config, workdir, base, data, encoders, freeze, fit_kwargs, fixed, static_keys) -> dict:
    path = workdir / "search.json"
    if path.is_file():
        return json.loads(path.read_text())["best"]
    trials = search.sample_trials(base, config.search.space.to_dict(), config.search.num_trials, config.search.seed)
    trials = [{**tr, **fixed} for tr in trials]  # plugged encoders fix their own sizes
    train_cfg = dict(fit_kwargs["train_cfg"])
    if config.search.num_epochs:
        train_cfg["num_epochs"] = config.search.num_epochs
    results = search.run_trials(trials, data["splits"], static_keys=static_keys, workdir=workdir / "search",
                                encoders=encoders, freeze=freeze, **{**fit_kwargs, "train_cfg": train_cfg})
    best = search.best_trial(results)
    publish(path, {"best": best, "trials": results})
    return best


def _gbdt(config, workdir: Path, data: dict, t_start: float) -> dict:
    """``train_and_evaluate`` of the gradient-boosted-trees baseline (``popjax.gbdt``): the same search on
    validation and seeds, the same metrics.json."""
    from popjax import gbdt

    vectors = data["constants"].get("headline_encoder", {}).get("word_vectors")
    base = {**config.gbdt.to_dict(), "seed": config.train.first_seed}
    chosen = base
    if config.search.num_trials > 0:
        path = workdir / "search.json"
        if path.is_file():
            chosen = json.loads(path.read_text())["best"]
        else:
            trials = search.sample_trials(base, config.gbdt_space.to_dict(), config.search.num_trials,
                                          config.search.seed)
            results = [{"trial": tr, **{k: r[k] for k in ("val", "test")}}
                       for tr, r in zip(trials, gbdt.fit(data["splits"], vectors, trials))]
            chosen = search.best_trial(results)
            publish(path, {"best": chosen, "trials": results})
    seeds = [{**chosen, "seed": config.train.first_seed + k} for k in range(config.train.num_seeds)]
    results = gbdt.fit(data["splits"], vectors, seeds)
    val, test = [r["val"] for r in results], [r["test"] for r in results]
    t = max(range(len(seeds)), key=lambda k: metrics.selection_key(val[k]))
    summary = {"val": val[t], "test": test[t], "selected_seed": seeds[t]["seed"], "best_epoch": None,
               "seeds": _seed_summary(seeds, val, test), "hparams": seeds[t], "epochs_run": 0, "devices": 0,
               "processes": jax.process_count(), "backbone": data["meta"].get("backbone"),
               "seconds": round(time.time() - t_start, 1)}
    _publish_predictions(workdir, np.stack([r["p_test"] for r in results]))
    publish(workdir / "metrics.json", summary)
    return summary


def _publish_predictions(workdir: Path, p_test) -> None:
    """``test_predictions.npy``: P(popular) [seeds, test videos] in the dataset's test order (what the
    intervals of ``table1`` and studies resample)."""
    if p_test is not None and jax.process_index() == 0:
        files.save_npy(workdir / "test_predictions.npy", np.asarray(p_test))


def _seed_summary(seeds, val, test) -> dict:
    out = {"seed": [tr["seed"] for tr in seeds]}
    for split, results in (("val", val), ("test", test)):
        for metric in ("accuracy", "spearman"):
            values = [r[metric] if r else math.nan for r in results]
            mean, std = search.mean_std(values)
            out[f"{split}_{metric}"] = values
            out[f"{split}_{metric}_mean"], out[f"{split}_{metric}_std"] = mean, std
    return out


# --------------------------------------------------------------------------------------------- Table 1
def table1(config, workdir) -> dict:
    """The rows of ``config.table1.rows`` named in ``config.table1.variants`` (search + seeds each), and
    ``table1.md`` / ``table1.json`` beside the paper's numbers. A row is ``{"model": settings over
    config.model, "encoders": (video row, headline row) for multimodal rows, "paper": (accuracy %, Spearman)}``."""
    workdir = Path(workdir)
    rows_cfg, variants = config.table1.rows, tuple(config.table1.variants)
    unknown = [name for name in variants if name not in rows_cfg]
    if unknown:  # before training anything
        raise ConfigError(f"config.table1.variants: unknown Table-1 row(s) {unknown}; expected some of "
                          f"{list(rows_cfg)}")
    subs = {}
    for name in variants:
        sub = subs[name] = config.copy_and_resolve_references()
        with sub.unlocked():
            sub.model.update(rows_cfg[name].model)
            sub.learner = rows_cfg[name].get("learner", "neural")
            if rows_cfg[name].get("encoders"):
                video, headline = rows_cfg[name].encoders
                sub.multimodal.video_workdir = str(workdir / video) if video in variants else ""
                sub.multimodal.headline_workdir = str(workdir / headline) if headline in variants else ""
    with ThreadPoolExecutor(1) as host:
        # The boosted-trees rows run on the host's cores, in a thread, while the neural rows train (no row
        # reads another's results but the multimodal ones; trees call no collectives).
        results = {name: _cached_metrics(workdir / name) for name in subs}   # rows a previous run finished
        pending = {name: host.submit(train_and_evaluate, sub, workdir / name) for name, sub in subs.items()
                   if sub.learner == "gbdt" and not results[name]}
        results.update({name: results[name] or train_and_evaluate(sub, workdir / name)
                        for name, sub in subs.items() if name not in pending})
        results.update({name: future.result() for name, future in pending.items()})
    rows, cells = [], []
    for name in variants:
        result, sub = results[name], subs[name]
        s = result["seeds"]
        rows.append({"variant": name, "accuracy": s["test_accuracy_mean"], "accuracy_std": s["test_accuracy_std"],
                     "spearman": s["test_spearman_mean"], "spearman_std": s["test_spearman_std"],
                     "seeds": len(s["seed"])})
        cells.append({"name": name, "settings": rows_cfg[name].to_dict(), "dir": str(workdir / name),
                      "config": sub.to_dict(), "seconds": result.get("seconds")})
    # Table 1 as a study: 95% intervals over test videos, each row against the first (the paper's baseline).
    st = config.study
    comparison = study_lib.compare(cells, variants[0], n_resamples=st.n_resamples, confidence=st.confidence,
                                   seed=st.seed)
    for row, cell in zip(rows, comparison["cells"]):
        row.update({"accuracy_ci": cell["accuracy"]["ci"], "spearman_ci": cell["spearman"]["ci"],
                    "vs_reference": cell["vs_reference"]})
    table = {"rows": rows, "reference": variants[0], "confidence": st.confidence, "n_test": comparison["n_test"],
             "paper": {k: {"accuracy": row.paper[0] / 100, "spearman": row.paper[1]}
                       for k, row in rows_cfg.items() if row.get("paper")}}
    publish(workdir / "table1.json", table)
    publish(workdir / "table1.md", format_table1(table))
    if jax.process_index() == 0:
        files.write_bytes(workdir / "table1.png", study_lib.plot(comparison, "Table 1"))
    return table


def format_table1(table: Mapping) -> str:
    """The Markdown table: per row the test accuracy and Spearman (mean ± std over seeds, the bootstrap
    interval over test videos), the paired difference from the reference row with its p-value, the paper's."""
    level = f"{100 * table.get('confidence', 0.95):g}%"
    ref = table.get("reference", "")
    lines = [f"| Variant | Acc [%] | {level} CI | Δ acc vs {ref} (p) | Spearman | {level} CI "
             f"| Δ Spearman (p) | Paper acc [%] | Paper Spearman | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def ci(r, metric, scale, digits):
        lo, hi = r.get(f"{metric}_ci") or (math.nan, math.nan)
        return f"[{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"

    def delta(r, metric, scale, digits):
        if r["variant"] == ref:
            return "reference"
        d = (r.get("vs_reference") or {}).get(metric)
        if not d:
            return "n/a"
        return f"{scale * d['diff']:+.{digits}f} ({d['p_value']:.3f})"

    for r in table["rows"]:
        paper = table["paper"].get(r["variant"], {})
        lines.append(f"| {r['variant']} | {100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f} "
                     f"| {ci(r, 'accuracy', 100, 2)} | {delta(r, 'accuracy', 100, 2)} "
                     f"| {r['spearman']:.3f} ± {r['spearman_std']:.3f} | {ci(r, 'spearman', 1, 3)} "
                     f"| {delta(r, 'spearman', 1, 3)} "
                     f"| {100 * paper.get('accuracy', math.nan):.2f} | {paper.get('spearman', math.nan):.3f} "
                     f"| {r['seeds']} |")
    return "\n".join(lines) + "\n"


def _cached_metrics(workdir: Path) -> dict | None:
    path = workdir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------------------------- files
def publish(path: Path, content) -> None:
    """Atomic write of ``content`` (text as it is, anything else as JSON), by process 0 only: with several
    processes (one work directory on a shared filesystem) every process computes the same content, and two
    writers would race."""
    if jax.process_index() == 0:
        files.write_text(path, content) if isinstance(content, str) else files.write_json(path, content)


def _logger(path: Path):
    def log(record: dict) -> None:
        if jax.process_index() == 0:
            with open(path, "a") as f:
                f.write(json.dumps(files.jsonable(record)) + "\n")
    return log

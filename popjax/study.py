"""Ablation studies (``config.kind = "study"``, ``configs/study.py``): settings over any config fields, each
trained by ``train.py``'s own machinery on the same splits, compared on the same test videos.

The cells are the combinations of ``config.study.grid`` (``((field, (value, ...)), ...)``, every field a
dotted config path such as ``"model.frame_pooling"`` or ``"data.frames"``), or the named
``config.study.variants`` (``((name, {field: value, ...}), ...)``), or each variant crossed with the grid
when both are given. Each cell is a ``train`` run of the config with its settings applied, in its own work
directory ``W/cells/<name>/`` (seeds vmapped; a finished cell is not trained again), written by the same
code as any ``train.py`` run: ``metrics.json``, ``test_predictions.npy``, curves, checkpoints.

Statistics (``popjax.stats``), on the test split: per cell, the mean and standard deviation over seeds and a
95% bootstrap interval over test videos; against the reference cell (``config.study.reference``, else the
first), the paired difference with its paired-bootstrap interval and a permutation-test p-value, for
accuracy and Spearman. ``W/study.json`` has every number and every cell's config, ``W/study.md`` the table,
``W/study.png`` the effects with their intervals.
"""
from __future__ import annotations

import io
import itertools
import json
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from popjax import files, stats
from popjax.data import dataset


def cells(config) -> list[tuple[str, dict]]:
    """[(name, {field: value})] of ``config.study``, in order."""
    grid = [(str(field), tuple(values)) for field, values in config.study.grid]
    combos = [dict(zip([f for f, _ in grid], values)) for values in itertools.product(*[v for _, v in grid])]
    variants = [(str(name), dict(settings)) for name, settings in config.study.variants]
    out = []
    for vname, settings in variants or [("", {})]:
        for combo in combos:
            parts = ([vname] if vname else []) + [f"{f.split('.')[-1]}={v}" for f, v in combo.items()]
            out.append(("_".join(parts) or "default", {**settings, **combo}))
    return out


def directory_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9=._-]+", "-", name)


def cell_config(config, settings: Mapping):
    """``config`` as one cell's ``train`` config: ``settings`` applied by dotted path; a path that does not
    exist is a ``ValueError`` naming it."""
    sub = config.copy_and_resolve_references()
    with sub.unlocked():
        sub.kind = "train"
        for field, value in settings.items():
            *parents, leaf = str(field).split(".")
            node = sub
            for p in parents:
                if p not in node:
                    raise ValueError(f"config.study: {field!r} is not a config field")
                node = node[p]
            if leaf not in node:
                raise ValueError(f"config.study: {field!r} is not a config field")
            node[leaf] = value
    return sub


def check(config) -> None:
    """Raise ``ValueError`` naming what makes ``config.study`` unusable, before anything is trained."""
    if not config.study.grid and not config.study.variants:
        raise ValueError("config.study: neither grid nor variants is set; nothing to compare")
    for entry in config.study.grid:
        if len(entry) != 2 or not isinstance(entry[1], (tuple, list)) or not entry[1]:
            raise ValueError(f"config.study.grid entry {entry!r}: expected (field, (value, ...))")
    listed = cells(config)
    names = [n for n, _ in listed]
    if len(set(map(directory_name, names))) != len(names):
        raise ValueError(f"config.study: cell names collide: {names}")
    if config.study.reference and config.study.reference not in names:
        raise ValueError(f"config.study.reference = {config.study.reference!r}: not a cell; cells: {names}")
    for _, settings in listed:
        cell_config(config, settings)


def run(config, workdir, train) -> dict:
    """Train every cell (``train(cell_config, cell_workdir)`` returns its metrics.json); returns what
    study.json holds (``write`` writes it)."""
    W = Path(workdir)
    check(config)
    listed = cells(config)
    results = []
    for name, settings in listed:
        sub = cell_config(config, settings)
        cell_dir = W / "cells" / directory_name(name)
        cached = cell_dir / "metrics.json"
        summary = json.loads(cached.read_text()) if cached.is_file() else train(sub, cell_dir)
        results.append({"name": name, "settings": settings, "dir": str(cell_dir), "config": sub.to_dict(),
                        "seconds": summary.get("seconds")})
    reference = config.study.reference or listed[0][0]
    s = config.study
    return compare(results, reference, n_resamples=s.n_resamples, confidence=s.confidence, seed=s.seed)


def test_split(features_dir) -> dict:
    """Labels, normalised views and ids of a dataset's test split (in its stored order)."""
    arrays = dataset.load_split(features_dir, "test")
    return {"label": np.asarray(arrays["label"]), "views": np.asarray(arrays["normalized_views"], np.float64),
            "id": [str(i) for i in arrays["id"]]}


def compare(results: Sequence[dict], reference: str, *, n_resamples: int, confidence: float, seed: int) -> dict:
    """The statistics of finished cells (``results``: name, settings, dir, config) against ``reference``."""
    tests = {}
    for r in results:
        features = r["config"]["data"]["features"]
        tests.setdefault(features, test_split(features))
    p = {r["name"]: np.load(Path(r["dir"]) / "test_predictions.npy", allow_pickle=False) for r in results}
    ref = next(r for r in results if r["name"] == reference)
    ref_test = tests[ref["config"]["data"]["features"]]
    cells_out = []
    for r in results:
        t = tests[r["config"]["data"]["features"]]
        cell = {"name": r["name"], "settings": r["settings"], "seeds": int(p[r["name"]].shape[0]),
                "seconds": r.get("seconds"), "config": r["config"],
                **stats.cell_summary(p[r["name"]], t["label"], t["views"], n_resamples=n_resamples,
                                     confidence=confidence, seed=seed)}
        if t["id"] == ref_test["id"] and np.array_equal(t["label"], ref_test["label"]):
            cell["vs_reference"] = stats.paired_difference(p[r["name"]], p[reference], t["label"], t["views"],
                                                           n_resamples=n_resamples, confidence=confidence,
                                                           seed=seed)
        else:
            cell["vs_reference"] = None   # not the same test videos: no paired comparison
        cells_out.append(cell)
    return {"reference": reference, "metrics": list(stats.METRICS), "confidence": confidence,
            "n_resamples": n_resamples, "seed": seed, "n_test": len(ref_test["label"]), "cells": cells_out}


def write(study: Mapping, workdir, title: str = "Study") -> dict:
    """``study.json``, ``study.md`` and ``study.png`` under ``workdir``; returns their paths."""
    W = Path(workdir)
    paths = {"json": W / "study.json", "md": W / "study.md", "png": W / "study.png"}
    files.write_json(paths["json"], study)
    files.write_text(paths["md"], markdown(study, title))
    files.write_bytes(paths["png"], plot(study, title))
    return {k: str(v) for k, v in paths.items()}


def markdown(study: Mapping, title: str = "Study") -> str:
    level = f"{100 * study['confidence']:g}%"
    lines = [f"## {title}", "",
             f"{study['n_test']} test videos; mean ± std over seeds, [{level} bootstrap interval over test videos]; "
             f"Δ: paired difference from `{study['reference']}` [{level} paired bootstrap], p: paired permutation "
             f"test ({study['n_resamples']} resamples).", "",
             "| cell | seeds | accuracy [%] | Δ accuracy | p | Spearman | Δ Spearman | p |",
             "| --- | ---: | --- | --- | ---: | --- | --- | ---: |"]
    for c in study["cells"]:
        row = [f"`{c['name']}`", str(c["seeds"])]
        for metric, scale in (("accuracy", 100.0), ("spearman", 1.0)):
            m = c[metric]
            digits = 2 if scale == 100.0 else 3
            row.append(f"{scale * m['mean']:.{digits}f} ± {scale * m['std']:.{digits}f} "
                       f"[{scale * m['ci'][0]:.{digits}f}, {scale * m['ci'][1]:.{digits}f}]")
            d = (c.get("vs_reference") or {}).get(metric)
            if c["name"] == study["reference"]:
                row += ["reference", ""]
            elif d is None:
                row += ["n/a", ""]
            else:
                row += [f"{scale * d['diff']:+.{digits}f} [{scale * d['ci'][0]:+.{digits}f}, "
                        f"{scale * d['ci'][1]:+.{digits}f}]", _p(d["p_value"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def plot(study: Mapping, title: str = "Study") -> bytes:
    """PNG bytes: per metric, each cell's value with its interval (left) and its paired difference from the
    reference with its interval (right; a dashed line at 0, filled markers where p < 0.05)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells_ = study["cells"]
    names = [c["name"] for c in cells_]
    y = np.arange(len(cells_))[::-1]
    fig, axes = plt.subplots(2, 2, figsize=(11, 1.4 + 0.42 * len(cells_) * 2), sharey=True,
                             constrained_layout=True)
    for row, (metric, scale, label) in enumerate((("accuracy", 100.0, "accuracy [%]"),
                                                   ("spearman", 1.0, "Spearman"))):
        ax = axes[row, 0]
        mean = np.array([scale * c[metric]["mean"] for c in cells_])
        lo = np.array([scale * c[metric]["ci"][0] for c in cells_])
        hi = np.array([scale * c[metric]["ci"][1] for c in cells_])
        # A seed mean can sit outside the bootstrap interval of its seed-mean (resamples where a metric is
        # undefined are left out of the interval): no whisker on that side.
        ax.errorbar(mean, y, xerr=[np.maximum(mean - lo, 0), np.maximum(hi - mean, 0)], fmt="o",
                    color="tab:blue", capsize=3)
        ax.set_yticks(y, names, fontsize=8)
        ax.set_xlabel(f"{label} (mean over seeds, {100 * study['confidence']:g}% bootstrap interval)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax = axes[row, 1]
        for yi, c in zip(y, cells_):
            d = (c.get("vs_reference") or {}).get(metric)
            if c["name"] == study["reference"]:
                ax.plot([0.0], [yi], "D", color="gray")
                ax.annotate("reference", (0.0, yi), xytext=(6, 4), textcoords="offset points", fontsize=7,
                            color="gray")
                continue
            if d is None:
                continue
            diff, (dlo, dhi) = scale * d["diff"], (scale * d["ci"][0], scale * d["ci"][1])
            significant = d["p_value"] is not None and d["p_value"] < 0.05
            ax.errorbar([diff], [yi], xerr=[[max(diff - dlo, 0)], [max(dhi - diff, 0)]], fmt="o", capsize=3,
                        color="tab:red",
                        markerfacecolor="tab:red" if significant else "white")
        ax.axvline(0.0, color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel(f"Δ {label} vs the reference (paired interval; filled: p < 0.05)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{title}: {study['n_test']} test videos, reference {study['reference']}", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()

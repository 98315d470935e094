"""What every benchmark records beside its numbers: when, on what, with which versions, run how
(``environment``, ``write_result``).

Also the small helpers the benchmarks share: the one timer (``per_call``), timing several implementations in
interleaved rounds (``interleaved``), a markdown table as RESULTS.md holds them (``markdown_table``), and the
relative error the tests use.

Scripts run as ``python benchmarks/NAME.py``: this folder is then ``sys.path[0]``, so ``from _env import ...`` and
imports of sibling scripts work as they are.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "onnx", "onnxruntime")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=False).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "popjax"], cwd=REPO, capture_output=True,
                                    text=True, check=False).stdout.strip())
    except OSError:
        commit, dirty = None, None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                    "platform": platform.platform(), "python": platform.python_version(),
                    # A busy machine depresses every number: the 1-minute load average when the run started.
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "versions": versions,
        "git": {"commit": commit, "popjax_dirty": dirty},
    }


def write_result(path, doc: dict) -> Path:
    """``doc`` as JSON at ``path``, with its ``environment()`` (taken at the start when the script put it
    there, else now) and the load average at the end."""
    env = doc.setdefault("environment", environment())
    env["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def per_call(fn, calls: int, warmup: int = 1, max_seconds: float | None = None,
             outputs: list | None = None) -> list[float]:
    """Seconds of each of ``calls`` calls of ``fn()`` after ``warmup`` untimed ones (``fn`` must block until its
    work is done). With ``max_seconds``, stops early once the timed calls took that long (after at least 2);
    with ``outputs``, each timed call's return value is appended to it (e.g. a first call's result)."""
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < calls and (max_seconds is None or len(times) < 2 or sum(times) < max_seconds):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        if outputs is not None:
            outputs.append(out)
    return times


def interleaved(calls: dict, rounds: int, per_round: int = 1) -> dict[object, list[float]]:
    """Per key: the seconds of each of ``rounds * per_round`` calls of ``calls[key]()`` (which must block), timed in
    ``rounds`` rounds that visit every key in turn, ``per_round`` calls each (A A B B C C A A ...), so that a drift
    of a shared machine's speed over the run reaches all of them alike instead of whichever ran first or last.
    Every fn should have been called once before (compilation, warm-up)."""
    times = {k: [] for k in calls}
    for _ in range(rounds):
        for k, fn in calls.items():
            times[k] += per_call(fn, per_round, warmup=0)
    return times


def standard_arguments(parser, name: str, *, devices_like: str | None = None, quick: str | None = None):
    """The options every script shares: ``--markdown``, ``--out`` (benchmarks/out/NAME.json), and where given
    ``--quick`` (its help) and ``--devices`` (JAX CPU devices as ``devices_like`` makes them, or JAX's one)."""
    if devices_like:
        parser.add_argument("--devices", choices=("all", "one"), default="all",
                            help=f"JAX CPU devices: 'all' = one per core as {devices_like} (default), "
                                 "'one' = JAX's default")
    if quick:
        parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--markdown", action="store_true", help="also print the table as RESULTS.md holds it")
    parser.add_argument("--out", default=f"benchmarks/out/{name}.json")


def median(xs):
    return statistics.median(xs)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """``rows`` under ``header`` as a markdown table, as RESULTS.md holds them: columns whose cells are all numbers
    (or empty) right-aligned; None prints as an empty cell."""
    def cell(v):
        return "" if v is None else str(v)

    def numeric(j):
        values = [r[j] for r in rows if r[j] not in (None, "")]
        return bool(values) and all(isinstance(v, (int, float)) for v in values)

    align = ["---:" if numeric(j) else "---" for j in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (as tests/test_weights.py)."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def jax_matmul_gflops(n: int, reps: int) -> dict:
    """GFLOP/s of an n x n x n jnp.dot on JAX's default device: fp32; bf16 with a float32 result (as popjax's
    bf16 layers compute); bf16 with a bf16 result (which XLA:CPU runs in fp32)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), np.float32)
    dot = jax.jit(jnp.dot)
    dot_f32_result = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    out = {}
    for name, dt, fn in (("fp32", jnp.float32, dot), ("bf16", jnp.bfloat16, dot_f32_result),
                         ("bf16_result", jnp.bfloat16, dot)):
        x = jnp.asarray(a, dt)
        s = median(per_call(lambda x=x, fn=fn: fn(x, x).block_until_ready(), reps))
        out[name] = round(2.0 * n ** 3 / s / 1e9, 1)
    return out

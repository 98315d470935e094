"""Process-wide settings of popjax's entry points (``train.py`` and the ``popjax`` command).

Call ``configure()`` first thing, before JAX starts its backends and threads: a persistent compilation
cache and, when JAX will run on the CPU (``runs_on_cpu``), the CPU's own settings: one CPU device per core
(``parallel.use_all_cpu_cores``) and, for the ``popjax`` command (ResNet50 work), freed host memory kept for
reuse (``retain_freed_memory``). On a GPU or TPU host neither applies.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
from pathlib import Path

import jax

from popjax import parallel


def configure(retain_memory: bool = False) -> dict:
    """Apply the settings above; returns what applied: ``{"cpu": bool, "retained_memory": bool, "cache": dir}``."""
    cpu = runs_on_cpu()
    retained = cpu and retain_freed_memory(default=retain_memory)
    if cpu:
        parallel.use_all_cpu_cores()
    return {"cpu": cpu, "retained_memory": retained, "cache": enable_compilation_cache()}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or a scheduler's share, not the
    machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def runs_on_cpu() -> bool:
    """Whether JAX will run on the CPU, decided before its backends start (which fixes the CPU device count):
    the first of ``JAX_PLATFORMS`` (``jax_platforms``) when set, else whether no accelerator plugin (CUDA, ROCm,
    TPU) is installed. A host with a plugin but no usable accelerator falls back to JAX's CPU defaults."""
    platforms = jax.config.jax_platforms
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not accelerator_plugins()


def accelerator_plugins() -> list[str]:
    """The JAX accelerator plugins installed (as JAX discovers them: ``jax_plugins`` entry points and
    namespace modules), and ``libtpu``."""
    names = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
    try:
        import jax_plugins

        names += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
    except ImportError:
        pass
    if importlib.util.find_spec("libtpu") is not None:
        names.append("libtpu")
    return sorted(set(names))


# What /proc/cpuinfo calls bfloat16 dot-product instructions: x86 AVX512-BF16 and AMX-BF16, Arm BF16.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def native_bfloat16(backend: str | None = None, cpuinfo="/proc/cpuinfo") -> bool:
    """Whether ``backend`` (default: JAX's) computes bfloat16 matrix products in hardware, so that bfloat16 is
    the fast path: a TPU, a GPU with bfloat16 tensor cores (NVIDIA compute capability 8.0 and up, ROCm), or a
    CPU whose flags in ``cpuinfo`` list bfloat16 dot-product instructions (``CPU_BF16_FLAGS``; no such file,
    as on macOS: False). Elsewhere XLA emulates bfloat16 and float32 is faster."""
    backend = backend or jax.default_backend()
    if backend == "tpu":
        return True
    if backend in ("gpu", "cuda", "rocm"):
        capability = getattr(jax.devices(backend)[0], "compute_capability", None)
        try:
            return float(capability) >= 8.0
        except (TypeError, ValueError):   # not reported, or not a CUDA version (ROCm's gfx names)
            return True
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return False
    flags = {flag for line in lines if line.split(":")[0].strip() in ("flags", "Features")
             for flag in line.partition(":")[2].split()}
    return bool(flags & CPU_BF16_FLAGS)


# glibc's mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def retain_freed_memory(default: bool = True) -> bool:
    """Keep freed memory in the process for reuse instead of returning it to the OS (glibc malloc: one arena,
    no mmap'ed chunks, no trimming of the heap).

    XLA:CPU allocates the large buffers of a program afresh on every call. With glibc's defaults they are
    mapped and unmapped each time, so every call page-faults them in again, in system time; with the heap
    kept, far fewer faults and a faster ``Backbone.features`` (``benchmarks/RESULTS.md``). The price: the
    process keeps its peak heap until it exits, and compiling is slower (XLA's compiler threads share the one
    arena), which is why ``train.py``, which compiles many small programs and runs no ResNet50 outside the
    demo, leaves it off.

    Call it before threads start (arenas already made stay in use). ``POPJAX_RETAIN_MEMORY=1`` / ``0`` turns it
    on / off whatever ``default`` says. Returns whether it applied (glibc only).
    """
    if os.environ.get("POPJAX_RETAIN_MEMORY", "1" if default else "0") == "0":
        return False
    try:
        libc = ctypes.CDLL(None)   # the C library the process already runs on
        mallopt, _ = libc.mallopt, libc.gnu_get_libc_version
    except (OSError, AttributeError):   # not glibc (macOS, musl): keep its allocator's defaults
        return False
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(param, value) == 1 for param, value in settings)


def enable_compilation_cache(directory=None) -> Path | None:
    """Keep compiled XLA programs on disk, so that the next run skips compiling them (most of the demo's
    Table-1 stage and of a random backbone's first seconds are compilation).

    The directory is ``directory``, else ``$POPJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/popjax/jax``
    (``~/.cache/popjax/jax``); ``POPJAX_CACHE_DIR=`` (empty) turns the cache off. A cache that JAX was
    given already (``JAX_COMPILATION_CACHE_DIR``) is kept. Returns the directory in use, or None.
    """
    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    if directory is None:
        directory = os.environ.get("POPJAX_CACHE_DIR")
        if directory == "":
            return None
        if directory is None:
            base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
            directory = Path(base) / "popjax" / "jax"
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return Path(directory)

"""Entry-point settings (popjax.runtime): one CPU device per core and the persistent compilation cache."""
import os
import subprocess
import sys

from synthetic import REPO

PROBE = ("from popjax import runtime; runtime.configure(); import jax, jax.numpy as jnp; "
         "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
         "jax.jit(lambda x: jnp.tanh(x) @ x)(jnp.ones((8, 8))).block_until_ready(); "
         "print(jax.config.jax_compilation_cache_dir, jax.local_device_count())")


def probe(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("POPJAX_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR")}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**base, **env}, capture_output=True,
                          text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


def test_cache_directory_is_used_and_filled(tmp_path):
    cache = tmp_path / "cache"
    assert probe(POPJAX_CACHE_DIR=str(cache)) == [str(cache), str(os.cpu_count())]
    assert any(p.is_file() for p in cache.rglob("*"))   # the compiled program was written


def test_default_location_opt_out_and_jax_own_setting(tmp_path):
    assert probe(XDG_CACHE_HOME=str(tmp_path))[0] == str(tmp_path / "popjax" / "jax")
    assert probe(POPJAX_CACHE_DIR="")[0] == "None"
    assert probe(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine"), POPJAX_CACHE_DIR=str(tmp_path / "x"))[0] == \
        str(tmp_path / "mine")


FAULTS = """
import ctypes, resource, sys
from popjax import runtime
applied = runtime.retain_freed_memory(default=sys.argv[1] == "retain")
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def touched(n=64 << 20):   # page faults to allocate, fill and free 64 MB, as XLA's buffers are
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
touched()
print(applied, touched())
"""


def faults_of_reallocating(mode):
    proc = subprocess.run([sys.executable, "-c", FAULTS, mode], cwd=REPO, capture_output=True, text=True,
                          check=False, timeout=120, env={k: v for k, v in os.environ.items()
                                                         if k != "POPJAX_RETAIN_MEMORY"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    applied, faults = proc.stdout.split()
    return applied == "True", int(faults)


def test_retained_memory_is_reused_without_page_faults():
    """64 MB freed and allocated again: with glibc's defaults the block is unmapped and faulted in afresh
    (16k 4-KiB pages); kept by retain_freed_memory, it is reused in place."""
    applied, faults = faults_of_reallocating("retain")
    if not applied:
        import pytest
        pytest.skip("not glibc: retain_freed_memory does not apply")
    _, default_faults = faults_of_reallocating("default")
    assert default_faults > 10_000 and faults < 1_000, (default_faults, faults)


def test_retaining_memory_follows_the_entry_point_and_the_environment():
    env = {k: v for k, v in os.environ.items() if k != "POPJAX_RETAIN_MEMORY"}
    code = ("from popjax import runtime; print(runtime.retain_freed_memory(default=True), "
            "runtime.retain_freed_memory(default=False))")
    for value, expected in ((None, "True False"), ("0", "False False"), ("1", "True True")):
        run_env = env if value is None else {**env, "POPJAX_RETAIN_MEMORY": value}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=run_env, capture_output=True, text=True,
                             check=True, timeout=120).stdout.split()
        assert " ".join(out) == expected, (value, out)


def test_cpu_settings_apply_only_when_jax_runs_on_the_cpu():
    """On a GPU/TPU host (here: JAX told to use CUDA; its backends are never started) configure() leaves the CPU
    device count and the allocator alone; on the CPU it applies both."""
    code = ("from popjax import runtime; import jax; s = runtime.configure(retain_memory=True); "
            "print(s['cpu'], s['retained_memory'], jax.config.jax_num_cpu_devices)")
    base = {k: v for k, v in os.environ.items() if k not in ("POPJAX_RETAIN_MEMORY", "XLA_FLAGS")}
    for platforms, want in (("cuda", ["False", "False", "-1"]), ("cpu", ["True", "True", str(os.cpu_count())])):
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**base, "JAX_PLATFORMS": platforms},
                              capture_output=True, text=True, check=False, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split() == want, (platforms, proc.stdout)


def test_native_bfloat16_reads_the_cpu_flags(tmp_path):
    """bfloat16 counts as native on a CPU whose /proc/cpuinfo lists bf16 dot instructions (x86 AVX512-BF16 or
    AMX-BF16, Arm BF16) and on a TPU; not on a CPU without them, nor where there is no cpuinfo to read."""
    from popjax import runtime

    cases = {"flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n": False,
             "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n": True,
             "flags\t\t: fpu avx512f amx_bf16 amx_tile\n": True,
             "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16\n": True,
             "processor\t: 0\nFeatures\t: fp asimd\n": False}
    for k, (text, want) in enumerate(cases.items()):
        (tmp_path / f"cpuinfo{k}").write_text(text * 2)
        assert runtime.native_bfloat16("cpu", cpuinfo=tmp_path / f"cpuinfo{k}") is want, text
    assert runtime.native_bfloat16("cpu", cpuinfo=tmp_path / "none") is False
    assert runtime.native_bfloat16("tpu") is True

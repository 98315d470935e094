"""Shared test setup: CPU only, and a few small fixtures."""
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The train.py / popjax subprocesses of the tests share one compilation cache, not the user's ~/.cache.
_OWN_CACHE = None
if "POPJAX_CACHE_DIR" not in os.environ:
    _OWN_CACHE = os.environ["POPJAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="popjax-tests-jax-cache-")


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)

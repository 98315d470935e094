"""Atomic writes (popjax.files): all or nothing, shareable modes, numpy without pickle."""
import os
import stat

import numpy as np
import pytest

from popjax import files


def test_write_replaces_whole_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "sub" / "out.json"
    files.write_json(path, {"a": np.float32(0.5), "b": np.arange(3)})
    assert path.read_text() == '{\n  "a": 0.5,\n  "b": [\n    0,\n    1,\n    2\n  ]\n}\n'
    files.write_text(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = files.write_text(tmp_path / "out.txt", "old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        files.write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_mode_is_what_open_would_give(tmp_path):
    path = files.write_bytes(tmp_path / "a.bin", b"x")
    with open(tmp_path / "b.bin", "wb") as f:
        f.write(b"x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "b.bin").stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~files._UMASK


def test_npy_without_pickle(tmp_path):
    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    np.testing.assert_array_equal(np.load(files.save_npy(tmp_path / "a.npy", a), allow_pickle=False), a)
    with pytest.raises(ValueError):
        files.save_npy(tmp_path / "o.npy", np.array([{"x": 1}], dtype=object))

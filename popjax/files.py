"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

Each write goes to a temporary file in the destination folder, is flushed to disk, then renamed over the
destination (``os.replace`` is atomic on POSIX and Windows). The file gets the mode ``open()`` would give it
(0o666 less the umask), not ``mkstemp``'s private 0o600: results are meant to be shared.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _read_umask() -> int:
    mask = os.umask(0o022)   # reading the umask means setting it: done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_bytes(path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_csv(path, rows) -> Path:
    """``rows`` (lists of cells, the header first) as CSV with Unix line ends."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return write_text(path, buf.getvalue())


def write_jsonl(path, records) -> Path:
    return write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays turned into plain Python (NaN stays NaN)."""
    def default(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)
    return json.loads(json.dumps(obj, default=default))


def write_json(path, obj: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(jsonable(obj), indent=indent, ensure_ascii=False) + "\n")


def save_npy(path, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return write_bytes(path, buf.getvalue())

"""Manifests: the rows of a corpus, their popularity labels and their train/val/test splits.

A manifest is CSV (``.csv``) or JSON Lines (``.jsonl``; ``.json`` may also hold one JSON array
of objects) with the fields ``id, video, headline, views, followers``; other fields are
ignored and header/key names are matched case-insensitively. ``video`` paths are relative to
the manifest's folder (absolute paths are fine).

The paper's protocol (section 2 and 3): normalized views = views / page followers; a video is
popular iff its normalized views are above the median of the training split; splits are
80/10/10.

Bad rows are reported, never silently dropped: every data row ends up in exactly one of
``ManifestResult.rows`` and ``ManifestResult.errors``. Each rejected row gets one
:class:`RowError`, for the first failing check in the order of :data:`REASONS`. Problems with
the file as a whole (missing, unreadable, empty, no header, required columns missing) raise
:class:`ManifestError` instead.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

FIELDS = ("id", "video", "headline", "views", "followers")
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)

#: Reason codes of rejected rows. Checks run in this order and the first failing one is
#: reported: encoding, parsing, id, duplicate id, video field, views (missing, bad_number,
#: negative), followers (missing, bad_number, negative, zero), then the video file's existence.
REASONS = {
    "non_utf8": "the row's bytes are not valid UTF-8",
    "malformed_row": "wrong number of CSV fields, or a line that is not a JSON object",
    "missing_id": "the id is absent or blank",
    "duplicate_id": "the id was already used by an earlier row (the first occurrence claims "
                    "the id, even if that row is itself rejected; every later one is rejected)",
    "missing_video_field": "the video path is absent or blank",
    "missing_views": "views is absent or blank (only when labels are required)",
    "missing_followers": "followers is absent or blank (only when labels are required)",
    "bad_number": "views or followers is not a finite number",
    "negative_views": "views < 0",
    "negative_followers": "followers < 0",
    "zero_followers": "followers == 0, so normalized views are undefined",
    "missing_file": "the video file does not exist (or is not a file)",
}


class ManifestError(ValueError):
    """The manifest as a whole cannot be used (missing file, no header, required columns absent)."""


@dataclass(frozen=True)
class Row:
    """One accepted manifest row. ``video`` is absolute; ``row`` is the source row number."""
    id: str
    video: Path
    headline: str
    views: float | None
    followers: float | None
    normalized_views: float | None
    split: str
    row: int = 0


@dataclass(frozen=True)
class RowError:
    """One rejected row: ``row`` is the 1-based data row (CSV: records after the header; JSONL:
    the line number); ``line`` the file line where it starts; ``reason`` a code of
    :data:`REASONS`; ``message`` a sentence for people."""
    row: int
    id: str | None
    reason: str
    message: str
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ManifestResult:
    path: Path
    rows: list[Row] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    empty_headlines: list[str] = field(default_factory=list)   # ids of accepted rows

    @property
    def n_data_rows(self) -> int:
        return len(self.rows) + len(self.errors)

    def split(self, name: str) -> list[Row]:
        return [r for r in self.rows if r.split == name]

    def counts(self) -> dict[str, Any]:
        """Summary for reports: rows, accepted, rejected by reason, per split, empty headlines."""
        by_reason: dict[str, int] = {}
        for e in self.errors:
            by_reason[e.reason] = by_reason.get(e.reason, 0) + 1
        return {"rows": self.n_data_rows, "accepted": len(self.rows), "rejected": len(self.errors),
                "rejected_by_reason": by_reason,
                "splits": {s: sum(r.split == s for r in self.rows) for s in SPLITS},
                "empty_headlines": len(self.empty_headlines)}


# ---------------------------------------------------------------------------------------------
# Splits and labels
# ---------------------------------------------------------------------------------------------

def assign_split(id: str, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """``"train" | "val" | "test"`` from sha256(id) read as a uniform number in [0, 1).

    Depends on the id alone, so a row keeps its split when rows are added, removed or
    reordered (paper: 80/10/10).
    """
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    digest = hashlib.sha256(str(id).encode("utf-8", errors="surrogatepass")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def popularity_threshold(rows: Iterable[Row]) -> float:
    """Median normalized views of the TRAIN split (paper: split the data at the median).

    Computed on the training split only, so validation and test labels use a threshold that
    saw none of their view counts. ``np.median``: the mean of the two middle values for an
    even count.
    """
    values = [r.normalized_views for r in rows if r.split == "train" and r.normalized_views is not None]
    if not values:
        raise ValueError("no training rows with normalized views: cannot set the popularity threshold")
    return float(np.median(np.asarray(values, np.float64)))


def label(row: Row, threshold: float) -> int:
    """1 (popular) iff normalized views > threshold, else 0.

    Ties go to 0: a row exactly at the median is unpopular, so with many equal values the
    popular class can be somewhat below half of the training split.
    """
    if row.normalized_views is None:
        raise ValueError(f"row {row.id!r} has no normalized views (views/followers absent)")
    return int(row.normalized_views > threshold)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

_SURROGATE = re.compile("[\udc80-\udcff]")            # bytes that failed UTF-8 decoding
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")


def read_manifest(path: str | os.PathLike, require_labels: bool = True,
                  fractions: Sequence[float] = DEFAULT_FRACTIONS) -> ManifestResult:
    """Read and validate a CSV/JSONL manifest; see the module docstring and :data:`REASONS`.

    ``require_labels=False`` (``popjax predict``: unpublished videos have no views yet) lets
    views and followers be absent (``normalized_views`` is then None); when present they are
    still validated. ``fractions``: train/val/test shares for :func:`assign_split`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise ManifestError(f"manifest {path}: unknown format {suffix!r} (use .csv, .jsonl or .json)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} does not exist") from None
    except OSError as e:
        raise ManifestError(f"manifest {path} cannot be read: {e.strerror or e}") from None
    data = data.removeprefix(b"\xef\xbb\xbf")                  # UTF-8 byte order mark
    if not data.strip():
        raise ManifestError(f"manifest {path} is empty")
    required = FIELDS if require_labels else ("id", "video", "headline")
    records = _csv_records(path, data, required) if suffix == ".csv" else _json_records(path, data, required)

    base = Path(os.path.abspath(path.parent))
    result = ManifestResult(path=path)
    claimed: set[str] = set()
    for rec in records:
        row_or_error = _validate(rec, base, require_labels, fractions, claimed)
        if isinstance(row_or_error, RowError):
            result.errors.append(row_or_error)
        else:
            result.rows.append(row_or_error)
            if not row_or_error.headline.strip():
                result.empty_headlines.append(row_or_error.id)
    return result


@dataclass
class _Record:
    row: int
    line: int | None
    where: str                        # "row 3 (line 4)", "line 7", "item 2": for messages
    fields: dict[str, Any] | None     # None: the record could not be parsed
    problem: str | None = None        # "non_utf8" or "malformed_row"
    detail: str = ""


def _csv_records(path: Path, data: bytes, required: Sequence[str]) -> Iterator[_Record]:
    # Undecodable bytes become lone surrogates, so one bad row cannot break the CSV structure;
    # the rows containing them are rejected as non_utf8.
    text = data.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as e:
        raise ManifestError(f"manifest {path}: no readable CSV header ({e})") from None
    names = [h.strip().lower() for h in header]
    if any(_SURROGATE.search(n) for n in names):
        raise ManifestError(f"manifest {path}: the header line is not valid UTF-8")
    missing = [f for f in required if f not in names]
    if missing:
        raise ManifestError(f"manifest {path}: missing required column(s) {', '.join(missing)} "
                            f"(header: {', '.join(names)})")
    dupes = sorted({n for n in names if n in FIELDS and names.count(n) > 1})
    if dupes:
        raise ManifestError(f"manifest {path}: column(s) {', '.join(dupes)} appear more than once")
    row = 0
    while True:
        line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            row += 1
            yield _Record(row, line, f"row {row} (line {line})", None, "malformed_row",
                          f"malformed: the CSV parser failed ({e})")
            continue
        if not any(v.strip() for v in values):                  # blank line: not a data row
            continue
        row += 1
        where = f"row {row} (line {line})"
        if any(_SURROGATE.search(v) for v in values):
            first = values[names.index("id")] if len(values) == len(names) else None
            yield _Record(row, line, where, {"id": first}, "non_utf8")
        elif len(values) != len(names):
            yield _Record(row, line, where, None, "malformed_row",
                          f"malformed: it has {len(values)} fields but the header has {len(names)}"
                          + (" (an unclosed quote may have joined several lines)"
                             if any("\n" in v or "\r" in v for v in values) else ""))
        else:
            yield _Record(row, line, where, dict(zip(names, values)))


def _json_records(path: Path, data: bytes, required: Sequence[str]) -> Iterator[_Record]:
    if path.suffix.lower() == ".json" and data.lstrip().startswith(b"["):
        records = _json_array(path, data)
    else:
        records = list(_json_lines(data))
    parsed = [r.fields for r in records if r.fields is not None and r.problem is None]
    if parsed:   # the JSON counterpart of a missing column: no row at all has the key
        missing = [f for f in required if not any(f in obj for obj in parsed)]
        if missing:
            raise ManifestError(f"manifest {path}: no row has the key(s) {', '.join(missing)}")
    return iter(records)


def _json_lines(data: bytes) -> Iterator[_Record]:
    # JSON strings cannot hold raw newlines, so a JSONL record is exactly one line.
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.strip()
        if not raw:
            continue
        try:
            text, problem = raw.decode("utf-8"), None
        except UnicodeDecodeError:
            text, problem = raw.decode("utf-8", errors="surrogateescape"), "non_utf8"
        yield _parse_json_object(text, lineno, lineno, f"line {lineno}", problem)


def _json_array(path: Path, data: bytes) -> list[_Record]:
    try:
        items = json.loads(data.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"manifest {path}: not valid JSON ({e})") from None
    out = []
    for i, obj in enumerate(items, start=1):
        problem = "non_utf8" if _SURROGATE.search(json.dumps(obj, ensure_ascii=False)) else None
        out.append(_parse_json_object(obj, i, None, f"item {i}", problem))
    return out


def _parse_json_object(obj: Any, row: int, line: int | None, where: str,
                       problem: str | None) -> _Record:
    """``obj``: the text of one JSONL line, or an already parsed item of a JSON array."""
    if isinstance(obj, str) and line is not None:
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as e:
            return _Record(row, line, where, None, problem or "malformed_row",
                           f"malformed: not valid JSON ({e.msg} at column {e.colno})")
    if not isinstance(obj, dict):
        return _Record(row, line, where, None, problem or "malformed_row",
                       f"malformed: a JSON {type(obj).__name__}, not an object")
    fields = {str(k).strip().lower(): v for k, v in obj.items()}
    return _Record(row, line, where, fields, problem)


def _validate(rec: _Record, base: Path, require_labels: bool, fractions: Sequence[float],
              claimed: set[str]) -> Row | RowError:
    f = rec.fields or {}
    rid = _text(f.get("id"))
    clean_id = rid if rid and not _SURROGATE.search(rid) else None

    def error(reason: str, message: str) -> RowError:
        return RowError(rec.row, clean_id, reason, f"{rec.where}: {message}", rec.line)

    if rec.problem == "non_utf8":
        return error("non_utf8", "it contains bytes that are not valid UTF-8; re-save the manifest as UTF-8")
    if rec.problem:
        return error(rec.problem, rec.detail)
    if not rid:
        return error("missing_id", "the id is empty")
    if rid in claimed:
        return error("duplicate_id", f"id {rid!r} was already used by an earlier row; ids must be unique")
    claimed.add(rid)
    video = _text(f.get("video"))
    if not video:
        return error("missing_video_field", "the video path is empty")

    numbers: dict[str, float | None] = {}
    for name in ("views", "followers"):
        value = f.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if require_labels:
                return error(f"missing_{name}", f"{name} is empty (needed for the popularity label)")
            numbers[name] = None
            continue
        number = _number(value)
        if number is None:
            return error("bad_number", f"{name} {value!r} is not a finite number")
        if number < 0:
            return error(f"negative_{name}", f"{name} is negative ({value!r})")
        if name == "followers" and number == 0:
            return error("zero_followers", "followers is 0, so views/followers is undefined")
        numbers[name] = number

    p = Path(video).expanduser()
    p = Path(os.path.abspath(p if p.is_absolute() else base / p))
    if not p.is_file():
        return error("missing_file", f"video file {video!r} not found or not a file (looked at {p})")

    views, followers = numbers["views"], numbers["followers"]
    normalized = views / followers if views is not None and followers is not None else None
    headline = _text(f.get("headline")) or ""
    return Row(rid, p, headline, views, followers, normalized, assign_split(rid, fractions), rec.row)


def _text(value: Any) -> str | None:
    """A field as stripped text (JSON numbers too: 12 -> "12", 12.0 -> "12"); None stays None."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _number(value: Any) -> float | None:
    """A finite float from a number or a numeric string (``1,234`` thousands commas ok), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if _THOUSANDS.fullmatch(value):
            value = value.replace(",", "")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None

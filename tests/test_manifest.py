"""Manifest reading: every bad-row case reported with its reason and row, labels and splits."""
import json
from pathlib import Path

import numpy as np
import pytest

from popjax.data.manifest import (REASONS, ManifestError, Row, assign_split, label,
                                  popularity_threshold, read_manifest)


@pytest.fixture
def corpus(tmp_path):
    """A manifest folder with a few tiny dummy videos (existence is all the manifest checks)."""
    (tmp_path / "videos").mkdir()
    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / "videos" / f"{name}.mp4").write_bytes(b"\x00")
    (tmp_path / "videos" / "folder.mp4").mkdir()          # exists, but is not a file
    outside = tmp_path / "elsewhere" / "abs.mp4"
    outside.parent.mkdir()
    outside.write_bytes(b"\x00")
    return tmp_path


# (expected reason or None for a good row, CSV line bytes). One line per data row.
def _csv_cases(abs_video: Path):
    return [
        (None, b"g1,videos/a.mp4,Cute cat video,100,50"),
        (None, b"g2," + str(abs_video).encode() + b",Absolute path,10,10"),
        (None, b'g3,videos/b.mp4,,3,2'),                                   # empty headline: kept
        (None, b'g4,videos/c.mp4,"Quoted, with comma and\na newline",' + b'"1,234",1000'),
        (None, b"g5,./videos/../videos/d.mp4,Caf\xc3\xa9 \xe2\x9c\x93,0,7"),  # 0 views is fine
        ("missing_id", b",videos/a.mp4,No id,1,1"),
        ("duplicate_id", b"g1,videos/e.mp4,Same id again,1,1"),
        ("missing_video_field", b"b1,,No video,1,1"),
        ("missing_file", b"b2,videos/nope.mp4,Gone,1,1"),
        ("missing_file", b"b3,videos/folder.mp4,A folder,1,1"),
        ("missing_views", b"b4,videos/a.mp4,No views,,1"),
        ("missing_followers", b"b5,videos/a.mp4,No followers,1, "),
        ("bad_number", b"b6,videos/a.mp4,Text views,lots,1"),
        ("bad_number", b"b7,videos/a.mp4,NaN views,nan,1"),
        ("bad_number", b"b8,videos/a.mp4,Inf followers,1,inf"),
        ("negative_views", b"b9,videos/a.mp4,Negative,-1,1"),
        ("negative_followers", b"b10,videos/a.mp4,Negative,1,-5"),
        ("zero_followers", b"b11,videos/a.mp4,Zero,1,0"),
        ("non_utf8", b"b12,videos/a.mp4,Latin-1 caf\xe9,1,1"),
        ("malformed_row", b"b13,videos/a.mp4,Too few"),
        ("malformed_row", b"b14,videos/a.mp4,Too,many,1,1"),
    ]


def test_csv_every_bad_row_reported(corpus):
    cases = _csv_cases(corpus / "elsewhere" / "abs.mp4")
    lines = [b"\xef\xbb\xbfID, Video ,headline,views,followers"]      # BOM, case, spaces
    for _, line in cases:
        lines.append(line)
        if line.startswith(b"g2"):
            lines.append(b"")                                          # blank line: not a data row
    path = corpus / "manifest.csv"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")

    res = read_manifest(path)
    assert len(res.rows) + len(res.errors) == len(cases) == res.n_data_rows   # nothing dropped
    expected_errors = [(i, reason) for i, (reason, _) in enumerate(cases, start=1) if reason]
    assert [(e.row, e.reason) for e in res.errors] == expected_errors
    assert {e.reason for e in res.errors} <= set(REASONS)
    assert [r.id for r in res.rows] == ["g1", "g2", "g3", "g4", "g5"]

    by_id = {r.id: r for r in res.rows}
    assert by_id["g1"].video == corpus / "videos" / "a.mp4" and by_id["g1"].video.is_absolute()
    assert by_id["g2"].video == corpus / "elsewhere" / "abs.mp4"
    assert by_id["g5"].video == corpus / "videos" / "d.mp4"            # normalised, absolute
    assert by_id["g4"].headline == "Quoted, with comma and\na newline" and by_id["g4"].views == 1234
    assert by_id["g5"].headline == "Café ✓"
    assert by_id["g1"].normalized_views == 2.0 and by_id["g5"].normalized_views == 0.0
    assert res.empty_headlines == ["g3"]
    assert [r.row for r in res.rows] == [1, 2, 3, 4, 5]

    err = {e.row: e for e in res.errors}
    dup = err[7]
    assert dup.id == "g1" and "already used" in dup.message
    assert err[6].id is None                                           # missing id
    assert err[19].id == "b12" and "UTF-8" in err[19].message
    # line numbers: header = 1, g2's blank line and g4's quoted newline shift later rows by 2
    assert err[6].line == 9 and err[6].message.startswith("row 6 (line 9):")
    assert "videos/nope.mp4" in err[9].message
    js = err[9].to_json()
    assert js == {"row": 9, "id": "b2", "reason": "missing_file", "message": err[9].message, "line": 12}
    json.dumps([e.to_json() for e in res.errors])                      # serialisable
    assert res.counts()["rejected_by_reason"]["bad_number"] == 3


def test_jsonl_every_bad_row_reported(corpus):
    abs_video = str(corpus / "elsewhere" / "abs.mp4")

    def obj(**kw):
        return json.dumps(kw, ensure_ascii=False).encode()

    cases = [
        (None, obj(id="g1", video="videos/a.mp4", headline="Dog!", views=10, followers=4, extra=[1])),
        (None, obj(id=2, video=abs_video, headline="Numeric id", views="7", followers=7.0)),
        (None, obj(id="g3", video="videos/b.mp4", headline=None, views=0, followers=1)),  # empty
        (None, obj(id="g4", video="videos/c.mp4", views=1, followers=3)),           # no headline key
        ("missing_id", obj(video="videos/a.mp4", headline="x", views=1, followers=1)),
        ("duplicate_id", obj(id="g1", video="videos/e.mp4", headline="x", views=1, followers=1)),
        ("missing_video_field", obj(id="b1", video="", headline="x", views=1, followers=1)),
        ("missing_file", obj(id="b2", video="nope.mp4", headline="x", views=1, followers=1)),
        ("missing_views", obj(id="b3", video="videos/a.mp4", headline="x", followers=1)),
        ("missing_followers", obj(id="b4", video="videos/a.mp4", headline="x", views=1, followers=None)),
        ("bad_number", b'{"id": "b5", "video": "videos/a.mp4", "headline": "x", "views": NaN, '
                       b'"followers": 1}'),
        ("bad_number", obj(id="b6", video="videos/a.mp4", headline="x", views=True, followers=1)),
        ("bad_number", obj(id="b7", video="videos/a.mp4", headline="x", views="1e999", followers=1)),
        ("negative_views", obj(id="b8", video="videos/a.mp4", headline="x", views=-3, followers=1)),
        ("negative_followers", obj(id="b9", video="videos/a.mp4", headline="x", views=3, followers=-1)),
        ("zero_followers", obj(id="b10", video="videos/a.mp4", headline="x", views=3, followers=0)),
        ("non_utf8", b'{"id": "b11", "video": "videos/a.mp4", "headline": "caf\xe9", "views": 1, '
                     b'"followers": 1}'),
        ("malformed_row", b'{"id": "b12", "video": '),
        ("malformed_row", b'["b13", "videos/a.mp4"]'),
    ]
    lines = []
    for _, line in cases:
        lines.append(line)
        if line.startswith(b'{"id": "g3"'):
            lines.append(b"   ")                                       # blank line
    path = corpus / "manifest.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    res = read_manifest(path)
    assert len(res.rows) + len(res.errors) == len(cases)
    line_of = {}
    n = 0
    for i, line in enumerate(lines, start=1):
        if line.strip():
            n += 1
            line_of[n] = i
    expected = [(line_of[i], reason) for i, (reason, _) in enumerate(cases, start=1) if reason]
    assert [(e.row, e.reason) for e in res.errors] == expected           # row = line number
    assert all(e.line == e.row and e.message.startswith(f"line {e.row}:") for e in res.errors)
    assert [r.id for r in res.rows] == ["g1", "2", "g3", "g4"]
    assert res.rows[1].video == Path(abs_video) and res.rows[1].views == 7.0
    assert res.rows[0].normalized_views == 2.5
    assert res.empty_headlines == ["g3", "g4"]
    non_utf8 = next(e for e in res.errors if e.reason == "non_utf8")
    assert non_utf8.id == "b11"


def test_json_array_manifest(corpus):
    path = corpus / "manifest.json"
    path.write_text(json.dumps([
        {"id": "a", "video": "videos/a.mp4", "headline": "h", "views": 1, "followers": 2},
        {"id": "b", "video": "videos/zzz.mp4", "headline": "h", "views": 1, "followers": 2},
        "not an object",
    ]))
    res = read_manifest(path)
    assert [r.id for r in res.rows] == ["a"]
    assert [(e.row, e.reason) for e in res.errors] == [(2, "missing_file"), (3, "malformed_row")]


def test_whole_file_problems_raise(corpus):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(corpus / "nope.csv")
    with pytest.raises(ManifestError, match="unknown format"):
        read_manifest(corpus / "videos" / "a.mp4")
    (corpus / "empty.csv").write_bytes(b"")
    with pytest.raises(ManifestError, match="empty"):
        read_manifest(corpus / "empty.csv")
    (corpus / "cols.csv").write_text("id,path,title,views,followers\nx,videos/a.mp4,t,1,1\n")
    with pytest.raises(ManifestError, match="missing required column.*video.*headline"):
        read_manifest(corpus / "cols.csv")
    (corpus / "nolabels.csv").write_text("id,video,headline\nx,videos/a.mp4,t\n")
    with pytest.raises(ManifestError, match="views, followers"):
        read_manifest(corpus / "nolabels.csv")
    (corpus / "keys.jsonl").write_text(json.dumps({"id": "x", "path": "videos/a.mp4"}) + "\n")
    with pytest.raises(ManifestError, match="no row has the key.*video"):
        read_manifest(corpus / "keys.jsonl")
    (corpus / "dir.csv").mkdir()
    with pytest.raises(ManifestError, match="cannot be read"):
        read_manifest(corpus / "dir.csv")


def test_header_only_is_an_empty_manifest(corpus):
    (corpus / "m.csv").write_text("id,video,headline,views,followers\n")
    res = read_manifest(corpus / "m.csv")
    assert res.rows == [] and res.errors == []


def test_require_labels_false_accepts_missing_views(corpus):
    (corpus / "p.csv").write_text("id,video,headline,notes\nu1,videos/a.mp4,New video,x\n"
                                  "u2,videos/b.mp4,,\n")                  # extra column ignored
    res = read_manifest(corpus / "p.csv", require_labels=False)
    assert [r.id for r in res.rows] == ["u1", "u2"] and not res.errors
    assert all(r.views is None and r.followers is None and r.normalized_views is None for r in res.rows)
    (corpus / "p.jsonl").write_text(
        '{"id": "u1", "video": "videos/a.mp4", "headline": "h", "views": null}\n'
        '{"id": "u2", "video": "videos/a.mp4", "headline": "h", "views": 5, "followers": 0}\n')
    res = read_manifest(corpus / "p.jsonl", require_labels=False)
    assert [r.id for r in res.rows] == ["u1"]
    assert [e.reason for e in res.errors] == ["zero_followers"]          # present -> still validated
    with pytest.raises(ValueError, match="no training rows"):
        popularity_threshold(res.rows)
    with pytest.raises(ValueError, match="no normalized views"):
        label(res.rows[0], 1.0)


# ---------------------------------------------------------------------------------------------
# Splits and labels
# ---------------------------------------------------------------------------------------------

def _write_csv(path, rows):
    path.write_text("id,video,headline,views,followers\n" +
                    "".join(f"{i},videos/a.mp4,h,{v},{f}\n" for i, v, f in rows))
    return path


def test_split_fractions_on_10k_ids():
    splits = [assign_split(f"video-{i}") for i in range(10_000)]
    for name, target in zip(("train", "val", "test"), (0.8, 0.1, 0.1)):
        assert abs(splits.count(name) / 10_000 - target) < 0.015
    assert all(assign_split(f"video-{i}", (1.0, 0.0, 0.0)) == "train" for i in range(100))
    assert assign_split("x") == assign_split("x")
    with pytest.raises(ValueError):
        assign_split("x", (0.5, 0.5, 0.5))


def test_split_stable_under_reordering_and_adding_rows(corpus):
    rng = np.random.default_rng(0)
    base = [(f"v{i}", int(rng.integers(0, 1000)), int(rng.integers(1, 100))) for i in range(300)]
    more = base[::-1] + [(f"new{i}", 1, 1) for i in range(100)]
    a = read_manifest(_write_csv(corpus / "a.csv", base))
    b = read_manifest(_write_csv(corpus / "b.csv", more))
    split_a = {r.id: r.split for r in a.rows}
    split_b = {r.id: r.split for r in b.rows}
    assert len(split_a) == 300 and all(split_b[k] == v for k, v in split_a.items())
    assert {r.split for r in a.rows} == {"train", "val", "test"}


def test_threshold_is_train_median_and_labels(corpus):
    rng = np.random.default_rng(1)
    rows = [(f"v{i}", int(rng.integers(0, 10_000)), int(rng.integers(1, 500))) for i in range(501)]
    res = read_manifest(_write_csv(corpus / "m.csv", rows))
    train = [v / f for i, v, f in rows if assign_split(i) == "train"]
    thr = popularity_threshold(res.rows)
    assert thr == float(np.median(train))
    labels = [label(r, thr) for r in res.rows if r.split == "train"]
    assert abs(sum(labels) - len(train) / 2) <= 1                       # median split: balanced
    assert all(label(r, thr) == int(r.normalized_views > thr) for r in res.rows)


def test_label_ties_are_unpopular():
    def row(i, nv, split="train"):
        return Row(f"r{i}", Path("/x.mp4"), "", nv, 1.0, nv, split)
    rows = [row(0, 1.0), row(1, 2.0), row(2, 2.0), row(3, 2.0), row(4, 3.0), row(5, 100.0, "test")]
    thr = popularity_threshold(rows)
    assert thr == 2.0                                                    # test row ignored
    assert [label(r, thr) for r in rows] == [0, 0, 0, 0, 1, 1]

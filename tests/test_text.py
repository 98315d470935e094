"""Headline tokenizer, GloVe loading (packaged glove.6B.50d and .txt files) and the vocabulary."""
import gzip
import json

import numpy as np
import pytest

from popjax.data.text import (GLOVE_6B_50D, PAD, PAD_ID, UNK, UNK_ID, Vocabulary, WordVectors,
                              tokenize)

# The public glove.6B.50d vector of "the" (first line of glove.6B.50d.txt), first 10 values.
THE_50D = [0.418, 0.24968, -0.41242, 0.1217, 0.34527, -0.044457, -0.49688, -0.17862, -0.00066023, -0.6566]


@pytest.fixture(scope="module")
def glove():
    return WordVectors.load(None)


# ---------------------------------------------------------------------------------------------
# tokenize
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, tokens", [
    ("Don't miss this", ["do", "n't", "miss", "this"]),
    ("Can't stop, won't stop", ["ca", "n't", "stop", ",", "wo", "n't", "stop"]),
    ("It's what we'll see, they'd say, I'm sure you're right, I've been", [
        "it", "'s", "what", "we", "'ll", "see", ",", "they", "'d", "say", ",", "i", "'m", "sure",
        "you", "'re", "right", ",", "i", "'ve", "been"]),
    ("She\u2019s \u201camazing\u201d", ["she", "'s", '"', "amazing", '"']),   # curly quotes
    ("The U.S. and the U.K., e.g. at 5 a.m.", ["the", "u.s.", "and", "the", "u.k.", ",", "e.g.",
                                                "at", "5", "a.m."]),
    ("Mr. Smith of St. Louis", ["mr.", "smith", "of", "st.", "louis"]),
    ("Wow!!! Really?!", ["wow", "!", "!", "!", "really", "?", "!"]),
    ("the end.", ["the", "end", "."]),
    ("dogs' toys at 5 o'clock", ["dogs", "'", "toys", "at", "5", "o'clock"]),
    ("A well-known 5-year-old e-mail", ["a", "well-known", "5-year-old", "e-mail"]),
    ("Wait for it\u2026", ["wait", "for", "it", "..."]),
    ("Ｆｕｌｌ－ｗｉｄｔｈ ﬁne CAFÉ naïve", ["full-width", "fine", "café", "naïve"]),  # NFKC + lower
    ("zero\u200bwidth\ttab\nnewline", ["zero", "width", "tab", "newline"]),
    ("I \u2764\ufe0f cats \U0001F600", ["i", "\u2764", "cats", "\U0001F600"]),
])
def test_tokenize_cases(text, tokens):
    assert tokenize(text) == tokens


def test_tokenize_numbers():
    toks = tokenize("1,000 fans in 2019 paid $5.99 (50% off) for #1 at 3:30 24/7 in the '90s, "
                    "the 20th in the 1990s; id 12345678")
    assert toks == ["1,000", "fans", "in", "2019", "paid", "$", "5.99", "(", "50", "%", "off", ")",
                    "for", "#", "1", "at", "3:30", "24/7", "in", "the", "'90s", ",", "the", "20th",
                    "in", "the", "1990s", ";", "id", "12345678"]


def test_tokens_look_like_glove(glove):
    toks = tokenize("Don't miss: the U.S. man's $5 well-known video! 1,000 fans in 2019, 3.5 stars?")
    assert all(t in glove for t in toks), [t for t in toks if t not in glove]


def test_unknown_compounds_split_when_known_words_given(glove):
    text = "A well-known cat-video, 5-year-old--wow"
    assert tokenize(text) == ["a", "well-known", "cat-video", ",", "5-year-old", "--", "wow"]
    assert tokenize(text, known=glove) == ["a", "well-known", "cat", "-", "video", ",",
                                           "5-year-old", "--", "wow"]
    assert tokenize(text, max_len=4, known=glove) == ["a", "well-known", "cat", "-"]


@pytest.mark.parametrize("value", ["", "   ", None, float("nan"), np.float64("nan")])
def test_tokenize_empty(value):
    assert tokenize(value) == []


def test_tokenize_punctuation_only_and_non_str():
    assert tokenize("?!...") == ["?", "!", "..."]
    assert tokenize(2024) == ["2024"]
    assert tokenize(b"caf\xc3\xa9") == ["café"]


def test_tokenize_truncates_long_headlines():
    long = "word " * 100_000
    assert tokenize(long) == ["word"] * 32
    assert len(tokenize(long, max_len=5)) == 5
    assert len(tokenize(long, max_len=None)) == 100_000
    assert tokenize("a b", max_len=0) == []


# ---------------------------------------------------------------------------------------------
# GloVe
# ---------------------------------------------------------------------------------------------

def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_packaged_glove_is_the_real_glove_6b_50d(glove):
    assert len(glove) == 400_000 and glove.dim == 50 and glove.source == GLOVE_6B_50D
    assert glove.words[:4] == ["the", ",", ".", "of"]
    vecs, found = glove.lookup(["the", "king", "queen", "banana", "qwzxv-not-a-word"])
    assert found.tolist() == [True, True, True, True, False]
    assert vecs.dtype == np.float32 and vecs.shape == (5, 50)
    np.testing.assert_allclose(vecs[0, :10], THE_50D, rtol=0, atol=1e-6)
    assert _cos(vecs[1], vecs[2]) > 0.7                  # king ~ queen
    assert _cos(vecs[1], vecs[3]) < _cos(vecs[1], vecs[2]) - 0.3
    assert not vecs[4].any()                             # not found -> zero row


def test_packaged_glove_subset(glove):
    sub = WordVectors.load(GLOVE_6B_50D, words=["queen", "king", "zzzz-nope"])
    assert sorted(sub.words) == ["king", "queen"] and sub.dim == 50
    np.testing.assert_array_equal(sub.lookup(["king"])[0], glove.lookup(["king"])[0])


def _write_glove_txt(path, rows, header=None, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        if header:
            f.write(header + "\n")
        for word, vec in rows:
            f.write(word + " " + " ".join(f"{v:.6f}" for v in vec) + "\n")


def test_txt_loader_any_dim_spaces_in_words(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "new york city", ".", "café", "at&t", "the"]   # a 3-part word, a duplicate
    vecs = rng.normal(size=(len(words), 7)).astype(np.float32)
    path = tmp_path / "glove.test.7d.txt"
    _write_glove_txt(path, zip(words, vecs))
    with open(path, "a", encoding="utf-8") as f:
        f.write("broken 1.0 2.0\n")                                      # malformed: skipped
        f.write("dog " + " ".join(["0.5"] * 7) + "\n")
    wv = WordVectors.load(path)
    assert wv.dim == 7 and wv.source == str(path)
    assert wv.words == ["the", "cat", "new york city", ".", "café", "at&t", "dog"]
    got, found = wv.lookup(["new york city", "the", "dog", "broken", "mouse"])
    assert found.tolist() == [True, True, True, False, False]
    np.testing.assert_allclose(got[0], vecs[2], atol=1e-6)
    np.testing.assert_allclose(got[1], vecs[0], atol=1e-6)              # first occurrence wins
    np.testing.assert_allclose(got[2], 0.5)


def test_txt_loader_only_requested_words_gz_and_header(tmp_path):
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(200)]
    vecs = rng.normal(size=(200, 3)).astype(np.float32)
    path = tmp_path / "vectors.txt.gz"
    _write_glove_txt(path, zip(words, vecs), header="200 3", opener=gzip.open)
    wv = WordVectors.load(str(path), words={"w150", "w3", "absent"})
    assert sorted(wv.words) == ["w150", "w3"] and wv.dim == 3
    np.testing.assert_allclose(wv.lookup(["w150"])[0][0], vecs[150], atol=1e-6)


def test_txt_matches_package_for_the_same_words(tmp_path, glove):
    words = ["the", "king", "u.s."]
    vecs, _ = glove.lookup(words)
    path = tmp_path / "glove.6B.50d.txt"
    path.write_text("".join(w + " " + " ".join(repr(float(x)) for x in v) + "\n"
                            for w, v in zip(words, vecs)), encoding="utf-8")
    np.testing.assert_array_equal(WordVectors.load(path).lookup(words)[0], vecs)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        WordVectors.load(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("justwords\nnovectors\n")
    with pytest.raises(ValueError, match="not a GloVe"):
        WordVectors.load(bad)


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

HEADLINES = ["The cat saw the dog!", "A dog, a cat: the END", "Qwzxvbn the cat 12345678", ""]


def test_vocabulary_order_and_oov_policy(glove):
    lists = [tokenize(h) for h in HEADLINES]
    vocab = Vocabulary.build(lists, glove)
    assert vocab.itos[:2] == [PAD, UNK] and vocab.id_of(PAD) == PAD_ID
    # by count desc (the 4, cat 3, a 2, dog 2), then alphabetically; no-vector words excluded
    assert vocab.itos[2:6] == ["the", "cat", "a", "dog"]
    assert vocab.itos[6:] == sorted(vocab.itos[6:])
    assert "qwzxvbn" not in vocab and "12345678" not in vocab        # no GloVe vector -> <unk>
    ids, n = vocab.encode(tokenize(HEADLINES[2]), max_len=8)
    assert n == 4 and ids.dtype == np.int32
    assert ids.tolist() == [UNK_ID, vocab.id_of("the"), vocab.id_of("cat"), UNK_ID, 0, 0, 0, 0]
    # deterministic: same input in another order -> same vocabulary
    assert Vocabulary.build(lists[::-1], glove) == vocab


def test_vocabulary_min_count_and_max_size(glove):
    lists = [tokenize(h) for h in HEADLINES]
    assert Vocabulary.build(lists, glove, min_count=2).itos == [PAD, UNK, "the", "cat", "a", "dog"]
    assert Vocabulary.build(lists, glove, max_size=1).itos == [PAD, UNK, "the"]
    assert Vocabulary.build(lists, {"dog", "cat"}).itos == [PAD, UNK, "cat", "dog"]  # any word set


def test_encode_edge_cases(glove):
    vocab = Vocabulary.build([tokenize(h) for h in HEADLINES], glove)
    ids, n = vocab.encode([], max_len=4)
    assert n == 0 and ids.tolist() == [0, 0, 0, 0]
    ids, n = vocab.encode(tokenize("the cat " * 50, max_len=None), max_len=6)
    assert n == 6 and PAD_ID not in ids.tolist()
    batch, lengths = vocab.encode_batch([tokenize(h) for h in HEADLINES], max_len=5)
    assert batch.shape == (4, 5) and lengths.tolist() == [5, 5, 4, 0]
    assert vocab.decode(batch[0]) == ["the", "cat", "saw", "the", "dog"]
    with pytest.raises(ValueError):
        vocab.encode(["the"], max_len=0)
    ids, n, toks = vocab.encode_headline("The cat-dog saw a Qwzxvbn", max_len=8)
    assert toks == ["the", "cat", "-", "dog", "saw", "a", "qwzxvbn"] and n == 7
    assert ids.tolist() == [vocab.id_of(t) for t in toks] + [PAD_ID]
    assert vocab.encode_headline(None, 3)[1] == 0


def test_embedding_matrix_rows_are_glove(glove):
    vocab = Vocabulary.build([tokenize(h) for h in HEADLINES], glove)
    emb = vocab.embedding_matrix(glove)
    assert emb.shape == (len(vocab), 50) and emb.dtype == np.float32
    assert not emb[PAD_ID].any() and not emb[UNK_ID].any()
    np.testing.assert_array_equal(emb[2:], glove.lookup(vocab.itos[2:])[0])
    np.testing.assert_allclose(emb[vocab.id_of("the"), :10], THE_50D, atol=1e-6)
    small = WordVectors(["the"], np.ones((1, 50), np.float32))
    with pytest.raises(ValueError, match="no vector"):
        vocab.embedding_matrix(small)


def test_vocabulary_json_round_trip(tmp_path, glove):
    vocab = Vocabulary.build([tokenize(h) for h in HEADLINES], glove)
    path = vocab.save(tmp_path / "sub" / "vocab.json")
    data = json.loads(path.read_text(encoding="utf-8"))              # plain JSON
    assert data["words"][:2] == ["the", "cat"] and data["meta"]["vectors"]["source"] == GLOVE_6B_50D
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]   # no temp file left
    back = Vocabulary.load(path)
    assert back == vocab and back.itos == vocab.itos
    ids = [vocab.encode(tokenize(h), 16)[0] for h in HEADLINES]
    np.testing.assert_array_equal(ids, [back.encode(tokenize(h), 16)[0] for h in HEADLINES])
    assert Vocabulary.from_json(json.dumps(vocab.to_json())) == vocab
    with pytest.raises(ValueError, match="not a popjax vocabulary"):
        Vocabulary.from_json({"words": []})

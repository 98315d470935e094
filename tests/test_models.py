"""The paper's Flax modules against independent numpy references and the properties the paper relies on."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from popjax.models import Attention, HeadlineEncoder, MeanPooling, ResNet, build_model, masked_softmax


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm(p, xs):
    """Reference LSTM with the OptimizedLSTMCell parameterisation: gates from x W_i* + h W_h* + b_h*."""
    h = np.zeros(p["hi"]["kernel"].shape[0])
    c = np.zeros_like(h)
    outs = []
    for x in xs:
        gate = {g: x @ p[f"i{g}"]["kernel"] + h @ p[f"h{g}"]["kernel"] + p[f"h{g}"]["bias"] for g in "ifgo"}
        c = sigmoid(gate["f"]) * c + sigmoid(gate["i"]) * np.tanh(gate["g"])
        h = sigmoid(gate["o"]) * np.tanh(c)
        outs.append(h)
    return np.array(outs), h


# ------------------------------------------------------------------------------------------ attention
def test_attention_weights_sum_to_one_and_ignore_padding():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 7, 16)).astype(np.float32)
    mask = np.arange(7)[None] < np.array([[7], [4], [1]])
    att = Attention(attention_dim=8)
    params = att.init(jax.random.key(0), q, mask)
    out, state = att.apply(params, q, mask, mutable=["intermediates"])
    alpha = np.asarray(state["intermediates"]["alpha"][0])
    np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-6)
    assert np.all(alpha[~mask] == 0) and np.all(alpha[mask] > 0)
    # Changing what sits in the padding changes nothing.
    q2 = np.where(mask[..., None], q, rng.normal(size=q.shape) * 100).astype(np.float32)
    np.testing.assert_allclose(att.apply(params, q2, mask), out, rtol=1e-6)
    # Against the equations, in numpy.
    p = params["params"]
    u = np.tanh(q @ p["W_u"]["kernel"] + p["W_u"]["bias"])
    a = (u @ p["W_a"]["kernel"] + p["W_a"]["bias"])[..., 0]
    for b in range(3):
        n = mask[b].sum()
        ref = np.exp(a[b, :n] - a[b, :n].max())
        ref /= ref.sum()
        np.testing.assert_allclose(alpha[b, :n], ref, rtol=1e-5)
        np.testing.assert_allclose(out[b], ref @ q[b, :n], rtol=1e-5, atol=1e-6)


def test_all_masked_attention_is_zero_not_nan():
    alpha = masked_softmax(jnp.zeros((2, 5)), jnp.zeros((2, 5), bool))
    assert np.all(np.asarray(alpha) == 0)


def test_mean_pooling_equals_numpy_mean():
    x = np.random.default_rng(1).normal(size=(4, 18, 32)).astype(np.float32)
    out = MeanPooling().apply({}, x)
    np.testing.assert_allclose(out, x.mean(axis=1), rtol=1e-6)
    mask = np.arange(18)[None] < np.array([[18], [10], [3], [18]])
    out = MeanPooling().apply({}, x, mask)
    np.testing.assert_allclose(out[2], x[2, :3].mean(0), rtol=1e-6)


# ------------------------------------------------------------------------------------------- biLSTM
@pytest.fixture(scope="module")
def headline_case():
    rng = np.random.default_rng(2)
    vocab, dim, T = 20, 6, 9
    lengths = np.array([9, 5, 1, 0])
    tokens = np.where(np.arange(T)[None] < lengths[:, None], rng.integers(1, vocab, (4, T)), 0)
    enc = HeadlineEncoder(vocab_size=vocab, word_dim=dim, lstm_hidden=5, headline_pooling="last")
    variables = enc.init(jax.random.key(0), tokens, lengths)
    table = rng.normal(size=(vocab, dim)).astype(np.float32)
    variables = {**variables, "constants": {"word_vectors": table}}
    variables.pop("perturbations")
    return enc, variables, tokens, lengths, table


def test_bilstm_matches_numpy_reference_on_padded_batch(headline_case):
    enc, variables, tokens, lengths, table = headline_case
    d = np.asarray(enc.apply(variables, tokens, lengths))
    p = jax.tree.map(np.asarray, variables["params"])
    for b, n in enumerate(lengths):
        if n == 0:
            np.testing.assert_array_equal(d[b], 0.0)  # empty headline: zero vector, no NaN
            continue
        words = table[tokens[b, :n]]
        _, h_fwd = numpy_lstm(p["forward"]["cell"], words)
        # The backward direction on the padded batch == the LSTM run on the unpadded reversed sequence.
        _, h_bwd = numpy_lstm(p["backward"]["cell"], words[::-1])
        np.testing.assert_allclose(d[b], np.concatenate([h_fwd, h_bwd]), rtol=1e-5, atol=1e-6)


def test_bilstm_attention_states_ignore_padding(headline_case):
    enc, variables, tokens, lengths, table = headline_case
    att = enc.clone(headline_pooling="attention")
    v = att.init(jax.random.key(1), tokens, lengths)
    v = {"params": v["params"], "constants": variables["constants"]}
    out, state = att.apply(v, tokens, lengths, mutable=["intermediates"])
    beta = np.asarray(state["intermediates"]["attention"]["beta"][0])
    np.testing.assert_allclose(beta[lengths > 0].sum(-1), 1.0, rtol=1e-6)
    assert np.all(beta[np.arange(tokens.shape[1])[None] >= lengths[:, None]] == 0)
    # Same headline without padding -> same encoding.
    b = 1
    n = lengths[b]
    alone = att.apply(v, tokens[b:b + 1, :n], lengths[b:b + 1])
    np.testing.assert_allclose(alone[0], out[b], rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(out)) and np.all(np.asarray(out[3]) == 0)


def test_empty_headline_gradients_are_finite():
    model = build_model({"modality": "headline", "headline_pooling": "attention"}, vocab_size=5, word_dim=4)
    batch = {"tokens": jnp.zeros((2, 3), jnp.int32), "lengths": jnp.array([0, 2])}
    v = model.init(jax.random.key(0), batch)
    grads = jax.grad(lambda p: model.apply({**v, "params": p}, batch).sum())(v["params"])
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# --------------------------------------------------------------------------------- Table-1 variants
def _variant_params(modality, frames, words):
    model = build_model(dict(modality=modality, frame_pooling=frames, headline_pooling=words, frame_embed_dim=16,
                             frame_attention_dim=8, lstm_hidden=6, word_attention_dim=8, head_hidden=12),
                        vocab_size=10, word_dim=4)
    batch = {"features": jnp.zeros((2, 18, 2048)), "tokens": jnp.zeros((2, 5), jnp.int32),
             "lengths": jnp.array([5, 3])}
    shapes = jax.eval_shape(model.init, jax.random.key(0), batch)["params"]
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}


def test_baseline_and_attention_variants_differ_only_where_the_paper_says():
    mean, att = _variant_params("video", "mean", "last"), _variant_params("video", "attention", "last")
    # Baseline: mean of ResNet50 features straight into the two-layer head; attention adds q_i and (W_u, W_a).
    assert set(mean) == {"head/hidden/kernel", "head/hidden/bias", "head/logits/kernel", "head/logits/bias"}
    assert mean["head/hidden/kernel"] == (2048, 12) and att["head/hidden/kernel"] == (16, 12)
    assert set(att) - set(mean) == {"video_encoder/embed/kernel", "video_encoder/embed/bias",
                                    "video_encoder/attention/W_u/kernel", "video_encoder/attention/W_u/bias",
                                    "video_encoder/attention/W_a/kernel", "video_encoder/attention/W_a/bias"}
    last, att = _variant_params("headline", "mean", "last"), _variant_params("headline", "mean", "attention")
    assert {k: v for k, v in att.items() if "attention" not in k} == last  # same biLSTM and head
    assert {k for k in att if "attention" in k} == {f"headline_encoder/attention/{w}/{p}"
                                                    for w in ("W_u", "W_a") for p in ("kernel", "bias")}
    multi = _variant_params("multimodal", "attention", "attention")
    assert multi["head/hidden/kernel"] == (16 + 12, 12)  # [v; d] -> multimodal embedding
    assert {k for k in multi if k.startswith("video_encoder")} == {
        k for k in _variant_params("video", "attention", "last") if k.startswith("video_encoder")}


# ------------------------------------------------------------------------------------------- ResNet
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["v1", "v1.5"])
def test_resnet_bf16_shapes_and_dtypes(variant):
    model = ResNet(stage_sizes=(1, 1, 1, 1), width=8, variant=variant, num_classes=10, dtype=jnp.bfloat16)
    x = jnp.ones((2, 64, 64, 3))
    v = model.init(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v["params"]))
    out, state = model.apply({"params": v["params"], "batch_stats": v["batch_stats"]}, x,
                             mutable=["intermediates"])
    a = state["intermediates"]["last_conv"][0]
    assert a.shape == (2, 2, 2, 8 * 8 * 4) and a.dtype == jnp.bfloat16
    assert out["features"].shape == (2, 256) and out["features"].dtype == jnp.float32
    assert out["logits"].shape == (2, 10) and out["logits"].dtype == jnp.float32
    full = model.clone(dtype=jnp.float32).apply({"params": v["params"], "batch_stats": v["batch_stats"]}, x)
    np.testing.assert_allclose(out["features"], full["features"], rtol=5e-2, atol=5e-2)


def test_resnet_variants_put_the_stride_where_their_frameworks_do():
    for variant, strided in (("v1", "conv1"), ("v1.5", "conv2")):
        model = ResNet(stage_sizes=(1, 1), width=4, variant=variant)
        x = jnp.ones((1, 32, 32, 3))
        _, state = model.apply(model.init(jax.random.key(0), x), x, capture_intermediates=True,
                               mutable=["intermediates"])
        block = state["intermediates"]["conv3_block1"]
        assert block[strided]["__call__"][0].shape[1] == 4  # 8x8 input of the stage -> 4x4
        assert ("bias" in model.init(jax.random.key(0), x)["params"]["conv1"]) == (variant == "v1")


def test_bad_model_configs_raise():
    with pytest.raises(ValueError, match="unknown modality"):
        build_model({"modality": "audio"})
    with pytest.raises(ValueError, match="unknown frame pooling"):
        build_model({"modality": "video", "frame_pooling": "max"})
    with pytest.raises(ValueError, match="unknown ResNet variant"):
        ResNet(variant="v2").init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))

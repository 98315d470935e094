"""The paper's Flax modules against independent numpy references and the properties the paper relies on."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from popjax.models import Attention, HeadlineEncoder, MeanPooling, ResNet, build_model, masked_softmax
from popjax.models.resnet import (WINOGRAD, Conv, PointwiseConv, max_pool_3x3_s2, shifted_conv, winograd_conv3x3,
                                  winograd_kernel, winograd_kernels)


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
    enc = HeadlineEncoder(vocab_size=vocab, word_dim=dim, hidden=5, pooling="last")
    variables = enc.init(jax.random.key(0), tokens, lengths)
    table = rng.normal(size=(vocab, dim)).astype(np.float32)
    variables = {**variables, "frozen": {"word_vectors": table}}
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
    att = enc.clone(pooling="attention")
    v = att.init(jax.random.key(1), tokens, lengths)
    v = {"params": v["params"], "frozen": variables["frozen"]}
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
    model = build_model("headline", vocab_size=5, word_dim=4, headline_pooling="attention")
    batch = {"tokens": jnp.zeros((2, 3), jnp.int32), "lengths": jnp.array([0, 2])}
    v = model.init(jax.random.key(0), batch)
    grads = jax.grad(lambda p: model.apply({**v, "params": p}, batch).sum())(v["params"])
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# --------------------------------------------------------------------------------- Table-1 variants
def _param_paths(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_param_paths(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = tuple(v.shape)
    return out


def _variant_params(modality, frames, words):
    model = build_model(modality, frame_pooling_kind=frames, headline_pooling=words, vocab_size=10, word_dim=4,
                        frame_embed_dim=16, frame_attention_dim=8, lstm_hidden=6, word_attention_dim=8,
                        head_hidden=12)
    batch = {"features": jnp.zeros((2, 18, 2048)), "tokens": jnp.zeros((2, 5), jnp.int32),
             "lengths": jnp.array([5, 3])}
    return _param_paths(jax.eval_shape(model.init, jax.random.key(0), batch)["params"])


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


# --------------------------------------------------------------------------------------------- bf16
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


def _bf16(a):
    return np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32))


@pytest.mark.parametrize("k,stride,pad,size", [(3, 1, 1, 9), (3, 2, 1, 10), (7, 2, 3, 15)])
def test_shifted_conv_is_a_convolution(k, stride, pad, size):
    rng = np.random.default_rng(k + stride)
    x = rng.normal(size=(2, size, size, 5)).astype(np.float32)
    w = rng.normal(size=(k, k, 5, 6)).astype(np.float32)
    padding = ((pad, pad), (pad, pad))
    ref = jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = shifted_conv(jnp.pad(x, ((0, 0), *padding, (0, 0))), w, (stride, stride))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_kernel_is_g_kernel_g_transposed(tile):
    k = np.random.default_rng(tile).normal(size=(3, 3, 5, 7))
    g = np.asarray(WINOGRAD[tile]["G"])
    ref = np.stack([[g @ k[:, :, c, f] @ g.T for f in range(7)] for c in range(5)]).transpose(2, 3, 0, 1)
    u = np.asarray(winograd_kernel(k.astype(np.float32), tile))
    assert u.shape == ((tile + 2) ** 2, 5, 7)
    np.testing.assert_allclose(u.reshape(ref.shape), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("h,w", [(2, 2), (7, 7), (8, 10), (16, 16)])
def test_winograd_conv3x3_is_a_convolution(tile, h, w):
    rng = np.random.default_rng(h * w + tile)
    x = rng.normal(size=(2, h, w, 5)).astype(np.float32)
    k = rng.normal(size=(3, 3, 5, 7)).astype(np.float32)
    ref = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       precision="highest")
    out = winograd_conv3x3(x, winograd_kernel(k, tile), tile)
    assert out.shape == ref.shape
    # float32 rounding of the transforms: ~1e-7 (tile 2) / ~1e-6 (tile 4) of the largest output here
    assert np.abs(out - ref).max() < {2: 1e-6, 4: 1e-5}[tile] * np.abs(ref).max()


@pytest.mark.parametrize("size", [14, 15, 16, 56])   # every float32 3x3 stride-1 layer is Winograd, tile 4
def test_float32_conv_is_nn_conv(size):
    x = np.random.default_rng(size).normal(size=(2, size, size, 8)).astype(np.float32)
    conv = Conv(4, (3, 3), (1, 1), ((1, 1), (1, 1)), use_bias=True)
    ref = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)))
    v = ref.init(jax.random.key(0), x)
    v = jax.tree.map(lambda a: a + 0.1, v)   # a nonzero bias
    out, expected = np.asarray(conv.apply(v, x)), np.asarray(ref.apply(v, x))
    assert np.abs(out - expected).max() < 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_off_the_cpu_every_conv_is_xlas(monkeypatch, dtype):
    """On a GPU/TPU the CPU rewrites are off: the 3x3 layers (stride 1 and 2) lower to one convolution each
    and no Winograd kernels are prepared; on the CPU a stride-1 layer lowers to matrix products (Winograd)."""
    from popjax.models import resnet

    x = jnp.zeros((1, 16, 16, 8), jnp.float32)

    def primitives(strides):
        conv = Conv(8, (3, 3), strides, ((1, 1), (1, 1)), dtype=dtype)
        v = conv.init(jax.random.key(0), x)
        return {e.primitive.name for e in jax.make_jaxpr(conv.apply)(v, x).jaxpr.eqns}

    assert "conv_general_dilated" not in primitives((1, 1))
    monkeypatch.setattr(resnet.jax, "default_backend", lambda: "gpu")
    for s in ((1, 1), (2, 2)):
        assert "conv_general_dilated" in primitives(s) and "dot_general" not in primitives(s)
    model = ResNet(stage_sizes=(1,), width=4, dtype=dtype)
    v = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert not winograd_kernels(model, v, 64)


def test_winograd_kernels_are_computed_once_and_used():
    """``winograd_kernels`` returns U = G g G^T of each Winograd layer (float32: tile 4) and only for those;
    applying the model with them gives what it computes without them, and a changed U is used."""
    model = ResNet(stage_sizes=(1, 1), width=4)
    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    v = model.init(jax.random.key(0), x)
    assert "winograd" not in v
    pre = winograd_kernels(model, v)
    assert set(pre["winograd"]) == {"conv2_block1"}   # conv3_block1's 3x3 has stride 2
    u = pre["winograd"]["conv2_block1"]["conv2"]["kernel"]
    np.testing.assert_allclose(u, winograd_kernel(v["params"]["conv2_block1"]["conv2"]["kernel"], 4), rtol=1e-6)
    out = model.apply(v, x)["features"]
    np.testing.assert_array_equal(model.apply({**v, **pre}, x)["features"], out)
    zeroed = jax.tree.map(jnp.zeros_like, pre)
    assert not np.allclose(model.apply({**v, **zeroed}, x)["features"], out)


@pytest.mark.parametrize("size,stride", [(8, 1), (8, 2), (40, 1)])   # Winograd, shifted products, XLA's conv
def test_bf16_conv_is_the_float32_conv_of_bf16_inputs(size, stride):
    """Each bf16 path takes nn.Conv's parameters and equals the float32 convolution of the same bf16 values up
    to one bf16 rounding of the output (relative 2^-8); Winograd also rounds its transformed input and kernel
    to bf16 (each a sum of a few terms), within 2^-7 of the largest output."""
    rng = np.random.default_rng(size + stride)
    x = rng.normal(size=(2, size, size, 64)).astype(np.float32)
    conv = Conv(32, (3, 3), (stride, stride), ((1, 1), (1, 1)), use_bias=True, dtype=jnp.bfloat16)
    v = conv.init(jax.random.key(0), x)
    flax_v = jax.tree.map(np.asarray, v)
    assert jax.tree.structure(flax_v) == jax.tree.structure(
        nn.Conv(32, (3, 3), padding=((1, 1), (1, 1))).init(jax.random.key(0), x))
    out = np.asarray(conv.apply(v, x).astype(jnp.float32))
    p = flax_v["params"]
    ref = np.asarray(jax.lax.conv_general_dilated(_bf16(x), _bf16(p["kernel"]), (stride, stride), ((1, 1), (1, 1)),
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC")) + _bf16(p["bias"]))
    if stride == 1 and size <= 28:
        assert np.abs(out - ref).max() < 2 ** -7 * np.abs(ref).max()
    else:
        np.testing.assert_allclose(out, ref, rtol=2 ** -8, atol=1e-2)


def test_bf16_pointwise_conv_accumulates_in_float32():
    """2048 products per output: a bf16 running sum would drift by several bf16 steps; float32 accumulation
    leaves only the output's own rounding to nearest (at most 2^-8 relative)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(1, 2, 2, 2048)).astype(np.float32)
    conv = PointwiseConv(8, dtype=jnp.bfloat16, kernel_init=nn.initializers.uniform(1.0))
    v = conv.init(jax.random.key(0), x)
    out = np.asarray(conv.apply(v, x).astype(jnp.float32), np.float64)
    ref = _bf16(x).astype(np.float64) @ _bf16(v["params"]["kernel"][0, 0]).astype(np.float64)
    assert np.max(np.abs(out - ref) / np.abs(ref)) <= 2 ** -8


@pytest.mark.parametrize("size", [8, 9])
def test_bf16_max_pool_equals_flax_max_pool(size):
    x = jnp.asarray(np.random.default_rng(size).normal(size=(2, size, size, 3)) - 3.0, jnp.bfloat16)  # negative: -inf padding
    ref = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_array_equal(max_pool_3x3_s2(x), ref)


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
        build_model("audio")
    with pytest.raises(ValueError, match="unknown frame pooling"):
        build_model("video", frame_pooling_kind="max")
    with pytest.raises(ValueError, match="unknown ResNet variant"):
        ResNet(variant="v2").init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))

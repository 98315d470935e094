"""Grad-CAM against a brute-force reference: an explicit vjp on the model split at A, and finite
differences; plus the attention scaling, both normalisations and the no-positive-evidence case."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from popjax.explain.gradcam import make_explainer, normalize
from popjax.models import ResNet, build_model

B, N, S = 2, 3, 32


@pytest.fixture(scope="module")
def case():
    backbone = ResNet(stage_sizes=(1, 1), width=4, variant="v1.5")
    frames = np.random.default_rng(0).integers(0, 256, (B, N, S, S, 3), dtype=np.uint8)
    preprocess = lambda x: jnp.asarray(x, jnp.float32) / 255.0 - 0.5  # noqa: E731
    bvars = backbone.init(jax.random.key(0), preprocess(frames[0]))
    bvars = {"params": bvars["params"], "batch_stats": bvars["batch_stats"]}
    model = build_model(dict(modality="multimodal", frame_pooling="attention", headline_pooling="last",
                             frame_embed_dim=8, frame_attention_dim=6, lstm_hidden=5, head_hidden=7),
                        vocab_size=12, word_dim=4)
    tokens = np.array([[3, 5, 7, 0], [2, 4, 6, 8]], np.int32)
    lengths = np.array([3, 4], np.int32)
    batch = {"features": jnp.zeros((B, N, 32)), "tokens": tokens, "lengths": lengths}
    mvars = model.init(jax.random.key(1), batch)
    table = np.random.default_rng(2).normal(size=(12, 4)).astype(np.float32)
    stats = {"mean": np.random.default_rng(5).uniform(0, 1, 32).astype(np.float32),
             "std": np.random.default_rng(6).uniform(0.5, 2, 32).astype(np.float32)}
    mvars = {"params": mvars["params"], "constants": {"headline_encoder": {"word_vectors": table}, "feature_norm": stats}}
    return backbone, preprocess, bvars, model, mvars, frames, tokens, lengths


def split_model_reference(case, cls):
    """A and dS/dA from the model cut at A: S(A) = head(pool(mean_ij A)), differentiated directly."""
    backbone, preprocess, bvars, model, mvars, frames, tokens, lengths = case
    _, inter = backbone.apply(bvars, preprocess(frames.reshape(B * N, S, S, 3)), mutable=["intermediates"])
    A = inter["intermediates"]["last_conv"][0]

    def score(A):
        feats = jnp.mean(A, axis=(1, 2)).reshape(B, N, -1)
        return model.apply(mvars, {"features": feats, "tokens": tokens, "lengths": lengths})[:, cls].sum()

    return np.asarray(A), np.asarray(jax.grad(score)(A)), score


@pytest.mark.parametrize("target,cls", [("popular", 1), ("unpopular", 0)])
def test_gradcam_matches_split_model_vjp_and_finite_differences(case, target, cls):
    backbone, preprocess, bvars, model, mvars, frames, tokens, lengths = case
    out = make_explainer(backbone, preprocess, model, target=target)(bvars, mvars, frames, tokens, lengths)
    A, dA, score = split_model_reference(case, cls)
    # finite differences on a few entries of A
    rng = np.random.default_rng(3)
    for _ in range(3):
        idx = tuple(int(rng.integers(s)) for s in A.shape)
        eps = 1e-2
        plus, minus = A.copy(), A.copy()
        plus[idx] += eps
        minus[idx] -= eps
        fd = (float(score(plus)) - float(score(minus))) / (2 * eps)
        np.testing.assert_allclose(dA[idx], fd, rtol=2e-2, atol=1e-5)
    # Grad-CAM by the paper's formulas, in numpy
    gamma = dA.mean(axis=(1, 2))                                   # gamma_f = 1/K^2 sum_ij dS/dA^f_ij
    H = np.maximum(np.einsum("nijf,nf->nij", A, gamma), 0.0).reshape(B, N, *A.shape[1:3])
    np.testing.assert_allclose(out["raw"], H, rtol=1e-4, atol=1e-7)
    peak = H.max(axis=(2, 3), keepdims=True)
    normalized = np.where(peak > 0, H / np.where(peak > 0, peak, 1), 0)
    alpha = np.asarray(out["alpha"])
    np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-6)
    expected = normalized * (alpha / alpha.max(-1, keepdims=True))[..., None, None]
    np.testing.assert_allclose(out["heatmaps"], expected, rtol=1e-4, atol=1e-7)
    assert np.all(np.asarray(out["positive"]) == (peak[..., 0, 0] > 0))
    # The frame with the largest alpha keeps a maximum of exactly 1 (if it has positive evidence).
    top = alpha.argmax(-1)
    for b in range(B):
        if out["positive"][b, top[b]]:
            assert float(np.max(out["heatmaps"][b, top[b]])) == pytest.approx(1.0)


def test_joint_normalisation_over_the_video(case):
    backbone, preprocess, bvars, model, mvars, frames, tokens, lengths = case
    out = make_explainer(backbone, preprocess, model, normalization="video")(bvars, mvars, frames, tokens, lengths)
    raw = np.asarray(out["raw"])
    peak = raw.max(axis=(1, 2, 3), keepdims=True)
    alpha = np.asarray(out["alpha"])
    expected = np.where(peak > 0, raw / np.where(peak > 0, peak, 1), 0) * (alpha / alpha.max(-1, keepdims=True))[..., None, None]
    np.testing.assert_allclose(out["heatmaps"], expected, rtol=1e-4, atol=1e-7)


def test_gradient_times_input_word_scores_for_the_last_state_baseline(case):
    backbone, preprocess, bvars, model, mvars, frames, tokens, lengths = case
    out = make_explainer(backbone, preprocess, model)(bvars, mvars, frames, tokens, lengths)
    assert "beta" not in out and out["word_scores"].shape == tokens.shape
    # Reference: gradient with respect to the word-vector table (tokens of a row are distinct).
    feats = np.asarray(backbone.apply(bvars, preprocess(frames.reshape(B * N, S, S, 3)))["features"]).reshape(B, N, -1)
    table = mvars["constants"]["headline_encoder"]["word_vectors"]
    for b in range(B):
        def score(t):
            v = {**mvars, "constants": {**mvars["constants"], "headline_encoder": {"word_vectors": t}}}
            return model.apply(v, {"features": feats[b:b + 1], "tokens": tokens[b:b + 1],
                                   "lengths": lengths[b:b + 1]})[0, 1]
        g = np.asarray(jax.grad(score)(table))
        ref = [float(g[tok] @ table[tok]) if t < lengths[b] else 0.0 for t, tok in enumerate(tokens[b])]
        np.testing.assert_allclose(out["word_scores"][b], ref, rtol=1e-4, atol=1e-6)


def test_attention_headline_reports_beta(case):
    backbone, preprocess, bvars, model, mvars, frames, tokens, lengths = case
    att = build_model(dict(modality="headline", headline_pooling="attention", lstm_hidden=5), vocab_size=12, word_dim=4)
    v = att.init(jax.random.key(4), {"tokens": tokens, "lengths": lengths})
    v = {"params": v["params"], "constants": mvars["constants"]}
    out = make_explainer(backbone, preprocess, att)(bvars, v, frames, tokens, lengths)
    beta = np.asarray(out["beta"])
    np.testing.assert_allclose(beta.sum(-1), 1.0, rtol=1e-6)
    assert beta[0, 3] == 0 and "heatmaps" not in out


def test_no_positive_evidence_is_zero_not_nan():
    h = jnp.stack([jnp.zeros((7, 7)), jnp.arange(49.0).reshape(7, 7)])
    norm, positive = normalize(h)
    assert np.all(np.isfinite(norm)) and np.all(np.asarray(norm[0]) == 0)
    assert list(np.asarray(positive)) == [False, True] and float(norm[1].max()) == 1.0


def test_bad_arguments(case):
    backbone, preprocess, _, model, *_ = case
    with pytest.raises(ValueError, match="target"):
        make_explainer(backbone, preprocess, model, target="viral")
    with pytest.raises(ValueError, match="normalization"):
        make_explainer(backbone, preprocess, model, normalization="global")

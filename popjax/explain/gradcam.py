"""Attention-scaled Grad-CAM (paper Sec. 2, "Visualizations") and word importance.

For the popular-class score S (the logit, before softmax; ``target="unpopular"`` explains the other
class) of the whole model -- frames -> ResNet50 -> frame pooling -> (headline) -> head -- and the last
convolutional output A in R^{K x K x F} of each frame:

    gamma_f = 1/K^2 sum_ij dS/dA^f_ij,      H = max(0, sum_f gamma_f A^f),

then H is normalised to [0, 1] (per frame, or jointly over the video's frames) and scaled by
alpha_i / max(alpha) ("we use those weights to scale the magnitudes of Grad-CAM heatmaps").
dS/dA comes from ``jax.grad`` with respect to the zero ``perturbations/last_conv`` that ResNet adds to A,
for all N frames of a batch of videos in one jit-compiled call. A map that is zero everywhere (no
positive evidence for the target) is reported as such and stays zero: nothing is divided by zero.

Words: beta_t of an attention headline model; for the ``last`` baseline, gradient x input
(sum_d dS/dw_t,d * w_t,d) on the frozen word vectors.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

TARGETS = {"unpopular": 0, "popular": 1}
NORMALIZATIONS = ("frame", "video")


def normalize(h, axes=(-2, -1)):
    """h / max(h) over ``axes``; all-zero maps stay zero. Returns (normalised, has_positive_evidence)."""
    peak = jnp.max(h, axis=axes, keepdims=True)
    positive = peak > 0
    return jnp.where(positive, h / jnp.where(positive, peak, 1.0), 0.0), jnp.squeeze(positive, axes)


def cam(A, dS_dA):
    """H = ReLU(sum_f gamma_f A^f) with gamma_f = mean_ij dS/dA^f_ij; A, dS_dA: [..., K, K, F] -> [..., K, K]."""
    gamma = jnp.mean(dS_dA.astype(jnp.float32), axis=(-3, -2))
    return jax.nn.relu(jnp.einsum("...ijf,...f->...ij", A.astype(jnp.float32), gamma))


def make_explainer(backbone_model, preprocess: Callable, model, *, target: str = "popular",
                   normalization: str = "frame", gradients: bool = True) -> Callable:
    """A jit-compiled ``f(backbone_vars, model_vars, frames, tokens=None, lengths=None) -> dict``.

    With ``gradients=False`` only the forward pass runs: ``score``, ``alpha`` and ``beta`` (cheap scoring,
    e.g. of occluded frames).

    ``frames``: uint8 [B, N, S, S, 3]. Returns ``score`` [B] (P(popular)), ``raw`` [B, N, K, K] (H before
    normalisation), ``heatmaps`` [B, N, K, K] (normalised, attention-scaled), ``positive`` [B, N],
    ``alpha`` [B, N] (uniform 1/N for mean pooling), and for headline models ``beta`` [B, T] (attention)
    or ``word_scores`` [B, T] (gradient x input).
    """
    if target not in TARGETS:
        raise ValueError(f"target {target!r}: expected one of {sorted(TARGETS)}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization {normalization!r}: expected one of {NORMALIZATIONS}")
    cls = TARGETS[target]
    uses_video = model.video_encoder is not None
    uses_words = model.headline_encoder is not None

    def forward(perturbations, backbone_vars, model_vars, frames, tokens, lengths):
        batch, aux = {}, {}
        if uses_video:
            B, N = frames.shape[:2]
            x = preprocess(frames.reshape((B * N,) + frames.shape[2:]))
            out, inter = backbone_model.apply({**backbone_vars, "perturbations": {"last_conv": perturbations["A"]}},
                                              x, mutable=["intermediates"])
            aux["A"] = inter["intermediates"]["last_conv"][0]
            batch["features"] = out["features"].reshape(B, N, -1)
        if uses_words:
            batch["tokens"], batch["lengths"] = tokens, lengths
            model_vars = {**model_vars, "perturbations": {"headline_encoder": {"word_vectors": perturbations["w"]}}}
        logits, state = model.apply(model_vars, batch, mutable=["intermediates"])
        aux["logits"], aux["intermediates"] = logits, state["intermediates"]
        return jnp.sum(logits[:, cls]), aux

    def explain(backbone_vars, model_vars, frames, tokens=None, lengths=None):
        zeros = {}
        if uses_video:
            B, N = frames.shape[:2]
            shape = jax.eval_shape(lambda: backbone_model.apply(
                backbone_vars, preprocess(frames.reshape((B * N,) + frames.shape[2:])),
                mutable=["intermediates"])[1]["intermediates"]["last_conv"][0])
            zeros["A"] = jnp.zeros(shape.shape, shape.dtype)
        if uses_words:
            table = model_vars["constants"]["headline_encoder"]["word_vectors"]
            zeros["w"] = jnp.zeros(tokens.shape + (table.shape[-1],), table.dtype)
        if gradients:
            grads, aux = jax.grad(forward, has_aux=True)(zeros, backbone_vars, model_vars, frames, tokens, lengths)
        else:
            grads, aux = None, forward(zeros, backbone_vars, model_vars, frames, tokens, lengths)[1]
        inter = aux["intermediates"]
        out = {"score": jax.nn.softmax(aux["logits"])[:, 1], "logits": aux["logits"]}
        if uses_video and not gradients:
            attention = inter.get("video_encoder", {}).get("attention", {}).get("alpha")
            if attention:
                out["alpha"] = attention[0]
        if uses_video and gradients:
            B, N = frames.shape[:2]
            raw = cam(aux["A"], grads["A"])
            raw = raw.reshape((B, N) + raw.shape[1:])
            axes = (-2, -1) if normalization == "frame" else (-3, -2, -1)
            heat, positive = normalize(raw, axes)
            if normalization == "video":
                positive = jnp.max(raw, axis=(-2, -1)) > 0
            attention = inter.get("video_encoder", {}).get("attention", {}).get("alpha")
            alpha = attention[0] if attention else jnp.full((B, N), 1.0 / N)
            scale = alpha / jnp.max(alpha, axis=-1, keepdims=True)
            out.update(raw=raw, heatmaps=heat * scale[..., None, None], positive=positive, alpha=alpha)
        if uses_words:
            beta = inter.get("headline_encoder", {}).get("attention", {}).get("beta")
            if beta:
                out["beta"] = beta[0]
            elif gradients:
                w = jnp.take(model_vars["constants"]["headline_encoder"]["word_vectors"], tokens, axis=0)
                out["word_scores"] = jnp.sum(grads["w"] * w, axis=-1)
        return out

    return jax.jit(explain)

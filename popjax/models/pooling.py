"""Frame pooling (paper Sec. 2, "Video frames") and the two-layer soft attention it shares with headlines.

Attention, as in Yang et al. (2016), the paper's [16]:
    u_i = tanh(W_u q_i + b_u),   a_i = W_a u_i + b_a,   alpha_i = exp(a_i) / sum_k exp(a_k),
and the pooled vector is sum_i alpha_i q_i. Padded positions (``mask`` False) get alpha_i = 0; a sequence
with no valid position pools to the zero vector (no NaN). The weights are sown as
``intermediates/.../alpha`` so that explanations can read them.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


def masked_softmax(a, mask=None):
    """softmax over the last axis restricted to ``mask``; all-masked rows give all-zero weights."""
    if mask is None:
        return nn.softmax(a, axis=-1)
    a = jnp.where(mask, a, jnp.finfo(a.dtype).min)
    return jnp.where(mask, nn.softmax(a, axis=-1), 0.0)


def masked_mean(x, mask=None):
    """(1/N) sum_i x_i over valid positions i (x: [..., N, D], mask: [..., N])."""
    if mask is None:
        return jnp.mean(x, axis=-2)
    w = mask.astype(x.dtype)
    return jnp.einsum("...n,...nd->...d", w, x) / jnp.maximum(w.sum(-1, keepdims=True), 1.0)


class Attention(nn.Module):
    """Two-layer attention: returns sum_i alpha_i q_i and sows alpha (``intermediates/alpha``)."""

    attention_dim: int
    weights_name: str = "alpha"

    @nn.compact
    def __call__(self, q, mask=None):
        u = jnp.tanh(nn.Dense(self.attention_dim, name="W_u")(q))  # u_i = tanh(W_u q_i + b_u)
        a = nn.Dense(1, name="W_a")(u)[..., 0]                      # a_i = W_a u_i + b_a
        alpha = masked_softmax(a, mask)                              # alpha_i = softmax(a)_i
        self.sow("intermediates", self.weights_name, alpha)
        return jnp.einsum("...n,...nd->...d", alpha, q)


class Standardize(nn.Module):
    """x <- (x - mu) / sigma per feature channel, with mu and sigma of the training split kept fixed in the
    ``constants`` collection (set by ``popjax.experiment.load_data``; identity until then). ResNet50 features
    of different channels differ in scale by an order of magnitude, more so with a random backbone."""

    @nn.compact
    def __call__(self, x):
        mean = self.variable("constants", "mean", jnp.zeros, (x.shape[-1],), jnp.float32)
        std = self.variable("constants", "std", jnp.ones, (x.shape[-1],), jnp.float32)
        return (x - mean.value) / std.value


class MeanPooling(nn.Module):
    """Paper's video baseline: v = (1/N) sum_i x_i of the ResNet50 features, nothing learned."""

    @nn.compact
    def __call__(self, x, mask=None):
        return masked_mean(x, mask)


class AttentionPooling(nn.Module):
    """q_i = ReLU(W_q x_i + b_q) per frame, then v = sum_i alpha_i q_i with two-layer attention."""

    frame_embed_dim: int = 256       # q_i
    frame_attention_dim: int = 128   # u_i

    @nn.compact
    def __call__(self, x, mask=None):
        q = nn.relu(nn.Dense(self.frame_embed_dim, name="embed")(x))
        return Attention(self.frame_attention_dim, name="attention")(q, mask)


FRAME_POOLINGS = {"mean": MeanPooling, "attention": AttentionPooling}   # the video encoder of a Table-1 row

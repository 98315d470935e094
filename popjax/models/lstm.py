"""The LSTM of the headline encoder (paper Sec. 2, "Headline").

    z_t = x_t W_i + h_{t-1} W_h + b,    i, f, o = sigma(z_t^i, z_t^f, z_t^o),    g = tanh(z_t^g)
    c_t = f * c_{t-1} + i * g,          h_t = o * tanh(c_t),                      h_0 = c_0 = 0

``LSTM`` stores its parameters exactly as ``flax.linen.OptimizedLSTMCell`` under ``nn.RNN`` does
(``cell/{ii,if,ig,io}/kernel``, ``cell/{hi,hf,hg,ho}/{kernel,bias}``, same initialisers and random streams), so
checkpoints and initial values are those of the flax cell. Its ``recurrence`` computes h_1..h_T from x and the
weights: ``lstm_scan`` (a ``lax.scan`` that JAX differentiates) by default; training plugs in
``popjax.ops.lstm.lstm``, the same recurrence with a hand-written backward pass.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.recurrent import DenseParams, flip_sequences

GATES = "ifgo"


def gates(z):
    """z [..., 4H] -> (i, f, g, o)."""
    i, f, g, o = jnp.split(z, 4, axis=-1)
    return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def scan(x, W_i, W_h, b):
    """x [T, B, D] (time-major) -> h_t, c_t [T, B, H] and the gate activations [T, B, 4H], t = 1..T. All x_t W_i
    are one matmul before the loop."""
    zx = jnp.einsum("tbd,dk->tbk", x, W_i) + b

    def step(carry, zx_t):
        c, h = carry
        i, f, g, o = gates(zx_t + h @ W_h)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (c, h), (h, c, jnp.concatenate([i, f, g, o], axis=-1))

    zeros = jnp.zeros(x.shape[1:2] + W_h.shape[:1], zx.dtype)
    _, (h, c, z) = jax.lax.scan(step, (zeros, zeros), zx)
    return h, c, z


def lstm_scan(x, W_i, W_h, b):
    """h_1..h_T [T, B, H] of the LSTM over x [T, B, D] (time-major) from h_0 = c_0 = 0."""
    return scan(x, W_i, W_h, b)[0]


class LSTMParams(nn.Module):
    """W_i [D, 4H], W_h [H, 4H], b [4H] from per-gate parameters laid out as flax's OptimizedLSTMCell."""
    hidden: int

    @nn.compact
    def __call__(self, word_dim: int):
        cell = nn.OptimizedLSTMCell   # its default initialisers
        x_like, h_like = jnp.zeros((1, word_dim)), jnp.zeros((1, self.hidden))
        inputs = [DenseParams(self.hidden, use_bias=False, kernel_init=cell.kernel_init, name=f"i{g}")(x_like)[0]
                  for g in GATES]
        recurrent = [DenseParams(self.hidden, kernel_init=cell.recurrent_kernel_init, bias_init=cell.bias_init,
                                 name=f"h{g}")(h_like) for g in GATES]
        return (jnp.concatenate(inputs, -1), jnp.concatenate([k for k, _ in recurrent], -1),
                jnp.concatenate([b for _, b in recurrent], -1))


class LSTM(nn.Module):
    """One direction over padded batches: ``reverse`` reads each sequence from its own last element."""
    hidden: int
    reverse: bool = False
    recurrence: Callable = lstm_scan   # (x [T, B, D], W_i, W_h, b) -> h [T, B, H]

    @nn.compact
    def __call__(self, x, lengths):
        """x [B, T, D], lengths [B] -> (h at each sequence's last step [B, H], h_t [B, T, H], 0 in the padding)."""
        W_i, W_h, b = LSTMParams(self.hidden, name="cell")(x.shape[-1])
        if self.reverse:
            x = flip_sequences(x, lengths, num_batch_dims=1, time_major=False)
        h = self.recurrence(x.swapaxes(0, 1), W_i, W_h, b)   # [T, B, H]
        last = h[jnp.maximum(lengths - 1, 0), jnp.arange(h.shape[1])]
        h = h.swapaxes(0, 1)
        if self.reverse:
            h = flip_sequences(h, lengths, num_batch_dims=1, time_major=False)
        mask = jnp.arange(h.shape[1]) < lengths[:, None]
        return last, jnp.where(mask[..., None], h, 0.0)

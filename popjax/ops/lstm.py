"""The LSTM recurrence with a hand-written backward pass (``lstm``), for ``popjax.models.LSTM(recurrence=...)``.

Automatic differentiation of a ``lax.scan`` over the LSTM step computes the weight gradients inside the backward
loop: T small matmuls and accumulations per weight. ``lstm`` keeps only the recurrence in the loops: all x_t W_i
are one matmul before the forward loop, and after the backward loop (which yields dz_t)
dW_i = sum_t x_t^T dz_t, dW_h = sum_t h_{t-1}^T dz_t, db = sum_t dz_t and dx_t = dz_t W_i^T are one matmul each,
so a data-parallel step also reduces the weight gradients once, after the loop, instead of once per time step
(speed: ``benchmarks/lstm_recurrence.py``). Same values and gradients as differentiating
``popjax.models.lstm.lstm_scan``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from popjax.models.lstm import scan


@jax.custom_vjp
def lstm(x, W_i, W_h, b):
    """h_1..h_T [T, B, H] of the LSTM over x [T, B, D] (time-major) from h_0 = c_0 = 0."""
    return scan(x, W_i, W_h, b)[0]


def _lstm_fwd(x, W_i, W_h, b):
    h, c, gates = scan(x, W_i, W_h, b)
    return h, (x, W_i, W_h, h, c, gates)


def _lstm_bwd(saved, dh_out):
    x, W_i, W_h, h, c, gates = saved
    zeros = jnp.zeros_like(h[0])
    c_prev = jnp.concatenate([zeros[None], c[:-1]])
    h_prev = jnp.concatenate([zeros[None], h[:-1]])

    def step(carry, inputs):
        dh_next, dc_next = carry   # gradients reaching h_t, c_t from step t + 1
        dh_t, c_t, c_tm1, gates_t = inputs
        i, f, g, o = jnp.split(gates_t, 4, axis=-1)
        tanh_c = jnp.tanh(c_t)
        dh = dh_t + dh_next
        dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
        dz = jnp.concatenate([dc * g * i * (1 - i), dc * c_tm1 * f * (1 - f), dc * i * (1 - g * g),
                              dh * tanh_c * o * (1 - o)], axis=-1)
        return (dz @ W_h.T, dc * f), dz

    _, dz = jax.lax.scan(step, (zeros, zeros), (dh_out, c, c_prev, gates), reverse=True)
    dx = jnp.einsum("tbk,dk->tbd", dz, W_i)
    dW_i = jnp.einsum("tbd,tbk->dk", x, dz)
    dW_h = jnp.einsum("tbh,tbk->hk", h_prev, dz)
    return dx, dW_i, dW_h, dz.sum((0, 1))


lstm.defvjp(_lstm_fwd, _lstm_bwd)

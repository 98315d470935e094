"""Headline encoder (paper Sec. 2, "Headline"): frozen word vectors -> biLSTM -> pooling.

Words w_t are looked up in a frozen table (pre-trained GloVe), kept in the ``constants`` variable collection so
that it is checkpointed with the model but never seen by the optimizer. A bidirectional LSTM gives
h_t = [h_t^fwd; h_t^bwd]. Padded, variable-length headlines are handled exactly: the backward LSTM reads
each headline's own last word first, padding never enters a state (``popjax.models.lstm``; ``recurrence``
computes its loop, parameters laid out as flax's ``OptimizedLSTMCell``).

Pooling: ``last`` (paper's baseline, [11]): d = [h_T^fwd; h_1^bwd], the final states of both directions;
``attention``: d = sum_t beta_t h_t with the two-layer attention of ``pooling.Attention`` (beta sown as
``intermediates/.../beta``). An empty headline (length 0) encodes to the zero vector.
A zero ``perturbations/word_vectors`` is added to the looked-up vectors so that gradient x input word
importance can be taken with ``jax.grad``.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from popjax.models.lstm import LSTM, lstm_scan
from popjax.models.pooling import Attention

HEADLINE_POOLINGS = ("last", "attention")


class HeadlineEncoder(nn.Module):
    vocab_size: int
    word_dim: int
    lstm_hidden: int = 128             # per direction
    headline_pooling: str = "attention"   # last (baseline biLSTM) | attention
    word_attention_dim: int = 128      # u_t
    recurrence: Callable = lstm_scan   # popjax.models.LSTM's

    @nn.compact
    def __call__(self, tokens, lengths):
        """tokens: int [B, T] (0 = padding), lengths: int [B] -> d: [B, 2 * hidden]."""
        if self.headline_pooling not in HEADLINE_POOLINGS:
            raise ValueError(f"unknown headline pooling {self.headline_pooling!r}; expected one of {HEADLINE_POOLINGS}")
        table = self.variable("constants", "word_vectors", jnp.zeros, (self.vocab_size, self.word_dim))
        w = jnp.take(table.value, tokens, axis=0)  # w_t
        w = self.perturb("word_vectors", w)
        mask = jnp.arange(tokens.shape[-1]) < lengths[..., None]
        h_fwd_last, h_fwd = LSTM(self.lstm_hidden, recurrence=self.recurrence, name="forward")(w, lengths)
        h_bwd_last, h_bwd = LSTM(self.lstm_hidden, reverse=True, recurrence=self.recurrence,
                                 name="backward")(w, lengths)
        if self.headline_pooling == "last":
            d = jnp.concatenate([h_fwd_last, h_bwd_last], axis=-1)
            return jnp.where((lengths > 0)[..., None], d, 0.0)
        h = jnp.concatenate([h_fwd, h_bwd], axis=-1)  # h_t
        return Attention(self.word_attention_dim, weights_name="beta", name="attention")(h, mask)

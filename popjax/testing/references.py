"""Flax's own layers arranged as popjax's modules, with the same parameter trees: the references that the
hand-written recurrences are checked and timed against."""
from __future__ import annotations

import flax.linen as nn


class FlaxBiLSTM(nn.Module):
    """A bidirectional LSTM from flax's ``nn.RNN(OptimizedLSTMCell)`` with ``seq_lengths``: for inputs
    [B, T, D] and lengths [B], returns ``((h_fwd, outputs_fwd), (h_bwd, outputs_bwd))`` with the final states
    [B, H] and the outputs [B, T, H], as two ``popjax.models.LSTM`` named "forward" and "backward" do."""

    hidden: int
    unroll: int = 1

    @nn.compact
    def __call__(self, x, lengths):
        fwd = nn.RNN(nn.OptimizedLSTMCell(self.hidden, parent=None), unroll=self.unroll, name="forward")
        bwd = nn.RNN(nn.OptimizedLSTMCell(self.hidden, parent=None), reverse=True, keep_order=True,
                     unroll=self.unroll, name="backward")
        (_, hf), of = fwd(x, seq_lengths=lengths, return_carry=True)
        (_, hb), ob = bwd(x, seq_lengths=lengths, return_carry=True)
        return (hf, of), (hb, ob)

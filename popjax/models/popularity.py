"""Popularity classifier (paper Sec. 2): an encoder per modality and a two-layer head with 2 logits.

* ``video``:      features x_1..x_N -> standardise -> frame pooling -> v  -> head
* ``headline``:   tokens -> HeadlineEncoder -> d                    -> head
* ``multimodal``: [v; d] (the previously trained encoders)          -> head

The head is the paper's "two-layer neural network": z = ReLU(BN?(W_1 e + b_1)), logits = W_2 z + b_2.
For the multimodal model z is the multimodal embedding (sown as ``intermediates/head/embedding``).
Dropout (on e and on z) and batch normalisation are hyperparameters, as in the paper's random search.
Submodules are named ``video_encoder``, ``headline_encoder`` and ``head``, so trained unimodal encoders are
plugged into a multimodal parameter tree by plain dictionary surgery (``popjax.training``).
"""
from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from popjax.models.headline import HeadlineEncoder
from popjax.models.lstm import lstm_scan
from popjax.models.pooling import Standardize, frame_pooling

MODALITIES = ("video", "headline", "multimodal")


def dropout(x, rate, rng):
    """Inverted dropout whose ``rate`` may be a traced value (so trials can be vmapped over it)."""
    keep = 1.0 - rate
    return jnp.where(jax.random.bernoulli(rng, keep, x.shape), x / keep, 0.0)


class Head(nn.Module):
    """Two-layer network: z = ReLU(BN?(W_1 e + b_1)), logits = W_2 z + b_2, with dropout on e and z.

    Dropout rates may be traced arrays (vmapped hyperparameter search); ``batch_norm`` changes the
    parameter tree, so it is static.
    """

    hidden: int = 128
    input_dropout: float | jax.Array = 0.0
    dropout: float | jax.Array = 0.0
    batch_norm: bool = False
    num_classes: int = 2

    @nn.compact
    def __call__(self, e, train: bool = False):
        if train:
            e = dropout(e, self.input_dropout, self.make_rng("dropout"))
        z = nn.Dense(self.hidden, use_bias=not self.batch_norm, name="hidden")(e)  # BN has its own shift
        if self.batch_norm:
            z = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(z)
        z = nn.relu(z)
        self.sow("intermediates", "embedding", z)
        if train:
            z = dropout(z, self.dropout, self.make_rng("dropout"))
        return nn.Dense(self.num_classes, name="logits")(z)


class PopularityModel(nn.Module):
    """``__call__(batch, train)`` -> logits [B, 2]; class 1 is "popular".

    ``batch`` holds ``features`` [B, N, 2048] (and optionally ``frame_mask`` [B, N]) for video models,
    ``tokens`` [B, T] and ``lengths`` [B] for headline models.
    """

    head: Head
    video_encoder: Optional[nn.Module] = None
    headline_encoder: Optional[HeadlineEncoder] = None

    @nn.compact
    def __call__(self, batch, train: bool = False):
        embeddings = []
        if self.video_encoder is not None:
            x = Standardize(name="feature_norm")(batch["features"])
            embeddings.append(self.video_encoder(x, batch.get("frame_mask")))
        if self.headline_encoder is not None:
            embeddings.append(self.headline_encoder(batch["tokens"], batch["lengths"]))
        if not embeddings:
            raise ValueError("PopularityModel needs a video_encoder, a headline_encoder or both")
        return self.head(jnp.concatenate(embeddings, axis=-1), train=train)


def build_model(modality: str, *, frame_pooling_kind: str = "attention", headline_pooling: str = "attention",
                vocab_size: int = 2, word_dim: int = 50, frame_embed_dim: int = 256,
                frame_attention_dim: int = 128, lstm_hidden: int = 128, word_attention_dim: int = 128,
                head_hidden: int = 128,
                input_dropout: float = 0.0, dropout: float = 0.0, batch_norm: bool = False,
                recurrence: Callable = lstm_scan) -> PopularityModel:
    """One Table-1 model from plain hyperparameters (configs map onto these arguments)."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    video = frame_pooling(frame_pooling_kind, frame_embed_dim, frame_attention_dim) if modality != "headline" else None
    headline = None
    if modality != "video":
        headline = HeadlineEncoder(vocab_size=vocab_size, word_dim=word_dim, hidden=lstm_hidden,
                                   pooling=headline_pooling, attention_dim=word_attention_dim, recurrence=recurrence)
    head = Head(hidden=head_hidden, input_dropout=input_dropout, dropout=dropout, batch_norm=batch_norm)
    return PopularityModel(head=head, video_encoder=video, headline_encoder=headline)

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

import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from popjax.models.headline import HeadlineEncoder
from popjax.models.lstm import lstm_scan
from popjax.models.pooling import FRAME_POOLINGS, Standardize

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

    head_hidden: int = 128   # the hidden (multimodal embedding) size
    input_dropout: float | jax.Array = 0.0
    dropout: float | jax.Array = 0.0
    batch_norm: bool = False
    num_classes: int = 2

    @nn.compact
    def __call__(self, e, train: bool = False):
        if train:
            e = dropout(e, self.input_dropout, self.make_rng("dropout"))
        z = nn.Dense(self.head_hidden, use_bias=not self.batch_norm, name="hidden")(e)  # BN has its own shift
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


def build_model(settings: Mapping[str, Any], *, vocab_size: int = 2, word_dim: int = 50,
                recurrence: Callable = lstm_scan) -> PopularityModel:
    """One Table-1 model from ``settings``, a flat mapping of ``config.model`` and ``config.hparams`` fields.

    ``modality`` picks the encoders and ``frame_pooling`` the video encoder's class; every other field goes,
    by name, to each module that has an attribute of that name (``model_settings`` lists them). Fields no
    module takes are left to the caller (the optimizer's ``learning_rate``, ``weight_decay``, ``seed``).
    """
    s = dict(settings)
    modality = s.get("modality", "multimodal")
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    video = headline = None
    if modality != "headline":
        kind = s.get("frame_pooling", "attention")
        if kind not in FRAME_POOLINGS:
            raise ValueError(f"unknown frame pooling {kind!r}; expected one of {tuple(FRAME_POOLINGS)}")
        video = FRAME_POOLINGS[kind](**_attributes(FRAME_POOLINGS[kind], s))
    if modality != "video":
        headline = HeadlineEncoder(vocab_size=vocab_size, word_dim=word_dim, recurrence=recurrence,
                                   **_attributes(HeadlineEncoder, s))
    return PopularityModel(head=Head(**_attributes(Head, s)), video_encoder=video, headline_encoder=headline)


# Attributes that are not hyperparameters: set by build_model itself or fixed by the model.
_NOT_SETTINGS = {"parent", "name", "vocab_size", "word_dim", "recurrence", "num_classes"}


def _attributes(cls, settings: Mapping[str, Any]) -> dict:
    return {f.name: settings[f.name] for f in dataclasses.fields(cls)
            if f.name in settings and f.name not in _NOT_SETTINGS}


def encoder_settings(kind: str) -> frozenset[str]:
    """The settings that fix a trained ``kind`` ("video" / "headline") encoder's structure."""
    modules = FRAME_POOLINGS.values() if kind == "video" else (HeadlineEncoder,)
    return frozenset({"frame_pooling"} if kind == "video" else set()) | {
        f.name for cls in modules for f in dataclasses.fields(cls) if f.name not in _NOT_SETTINGS}


def model_settings() -> frozenset[str]:
    """The settings ``build_model`` uses: ``modality``, ``frame_pooling`` and every module attribute it fills."""
    modules = (*FRAME_POOLINGS.values(), HeadlineEncoder, Head)
    return frozenset({"modality", "frame_pooling"} | {f.name for cls in modules for f in dataclasses.fields(cls)
                                                      if f.name not in _NOT_SETTINGS})

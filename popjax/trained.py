"""A trained work directory as a model: ``checkpoints/best`` written and read (``save_model``,
``load_model``), and ``TrainedModel``, which turns raw inputs (videos, headlines) into the model's inputs the
way its features dataset was made (the same backbone, frame sampling and vocabulary). ``popjax predict`` and
``popjax explain`` both start from it.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from popjax import files, parallel, training
from popjax.backbone import Backbone
from popjax.data import dataset
from popjax.data.text import Vocabulary
from popjax.data.video import SampledFrames, sample_frames
from popjax.extract import Settings, frames_per_call


def save_model(workdir, variables: Mapping, info: Mapping, step: int) -> None:
    """The run's model into ``workdir/checkpoints/best`` (an orbax CheckpointManager that keeps the
    best-by-validation checkpoint): variables (params, batch_stats, constants) + model info (JSON)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["score"], best_mode="max",
                                           create=True)
    with ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints" / "best", options=options) as mngr:
        spearman = info["val"]["spearman"]
        score = info["val"]["accuracy"] + 1e-3 * (0.0 if math.isnan(spearman) else spearman)
        mngr.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(dict(variables)),
                                                info=ocp.args.JsonSave(files.jsonable(info))),
                  metrics={"score": score}, force=True)
        mngr.wait_until_finished()


def load_model(workdir) -> tuple[Any, dict, dict]:
    """(PopularityModel, variables, info) of a trained work directory."""
    import orbax.checkpoint as ocp

    path = Path(workdir).absolute() / "checkpoints" / "best"
    if not path.is_dir():
        raise FileNotFoundError(f"{workdir}: no trained model (checkpoints/best); run train.py first")
    with ocp.CheckpointManager(path) as mngr:
        step = mngr.best_step() if mngr.best_step() is not None else mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"{path}: no finished checkpoint")
        restored = mngr.restore(step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(),
                                                              info=ocp.args.JsonRestore()))
    info, variables = dict(restored["info"]), dict(restored["variables"])
    if "frozen" in variables:   # the collection's former name
        variables["constants"] = variables.pop("frozen")
    model = training.make_model(info["static"], info["vocab_size"], info["word_dim"])
    return model, jax.tree.map(np.asarray, variables), info


@dataclasses.dataclass
class TrainedModel:
    """A trained popularity model with everything needed to turn raw inputs into its inputs."""

    model: Any
    variables: dict
    info: dict
    backbone: Backbone | None
    vocab: Vocabulary | None
    settings: Settings
    batch_size: int = 32

    def __post_init__(self):
        self.mesh = parallel.local_mesh()
        self.batch_size = parallel.round_up(self.batch_size, self.mesh.size)
        model = self.model
        self._scores = jax.jit(lambda v, b: jax.nn.softmax(model.apply(v, b))[:, 1])

    @classmethod
    def load(cls, workdir, batch_size: int = 32, dtype=None, decoder: str = "cpu") -> "TrainedModel":
        """The model trained in ``workdir`` with the backbone and vocabulary of its features dataset; the
        backbone computes in ``dtype`` (default: the dtype those features were extracted with)."""
        model, variables, info = load_model(workdir)
        features_dir = Path(info["features"])
        meta = dataset.read_metadata(features_dir)
        dtype = dtype or meta.get("backbone_dtype", "float32")
        settings = Settings(num_frames=meta["num_frames"], seconds=meta["seconds"], max_words=meta["max_words"],
                            decoder=decoder)
        backbone = None
        if model.video_encoder is not None:
            backbone = Backbone.load(features_dir / meta["backbone_dir"], dtype=dtype,
                                     batch_size=frames_per_call(batch_size, settings.num_frames))
        vocab = Vocabulary.load(features_dir / meta["vocab"]) if model.headline_encoder is not None else None
        return cls(model, variables, info, backbone, vocab, settings, batch_size)

    @property
    def uses_video(self) -> bool:
        return self.backbone is not None

    @property
    def frames(self) -> np.ndarray:
        """Which of the ``settings.num_frames`` sampled frames the model sees (``config.data.frames``)."""
        return np.asarray(self.info.get("frames") or range(self.settings.num_frames), np.int64)

    def sample_frames(self, video) -> SampledFrames:
        """The frames of ``video`` the model sees, sampled as its dataset's were (``VideoError`` if it cannot be
        decoded)."""
        s = sample_frames(video, self.settings.num_frames, self.settings.seconds, self.backbone.metadata["image_size"],
                          timeout=self.settings.video_timeout, decoder=self.settings.decoder)
        return dataclasses.replace(s, frames=s.frames[self.frames], timestamps=np.asarray(s.timestamps)[self.frames])

    def encode_headlines(self, headlines: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """Token ids [B, T], lengths [B] and the tokens themselves (for word-level explanations)."""
        T = self.settings.max_words
        tokens, lengths, words = np.zeros((len(headlines), T), np.int32), np.zeros(len(headlines), np.int32), []
        for i, h in enumerate(headlines):
            ids, n, toks = self.vocab.encode_headline(h, T)
            tokens[i], lengths[i] = ids, n
            words.append(list(toks[:n]))
        return tokens, lengths, words

    def p_popular(self, features=None, tokens=None, lengths=None) -> np.ndarray:
        """P(popular) for up to ``batch_size`` videos; ``features`` [B, N, 2048] of the N sampled frames are
        rounded to float16 as in the dataset, and the model sees its ``frames`` of them. Padded to a static
        batch, split over this process's devices."""
        batch = {}
        if self.uses_video:
            batch["features"] = np.asarray(features, np.float16)[:, self.frames].astype(np.float32)
        if self.vocab is not None:
            batch["tokens"], batch["lengths"] = np.asarray(tokens, np.int32), np.asarray(lengths, np.int32)
        n = len(next(iter(batch.values())))
        sharding = parallel.batch_sharding(self.mesh)
        batch = {k: jax.device_put(parallel.pad_batch(v, self.batch_size), sharding) for k, v in batch.items()}
        return np.asarray(self._scores(self.variables, batch))[:n]

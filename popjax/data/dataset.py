"""The extracted features dataset: a TFDS dataset in array_record files, readable without TensorFlow.

One example per video: ``id``, ``split``, ``features`` (N x 2048 ResNet50 features, float16),
``timestamps`` (the N frames' real times, s), ``headline`` (text), ``tokens`` / ``length`` (word ids into
the dataset's vocabulary), ``views``, ``followers``, ``normalized_views`` and ``label`` (1 = popular: above
the training split's median normalised views). Dataset-wide facts (the threshold, the backbone, N, the
text settings) sit in the TFDS metadata; the vocabulary and its frozen word vectors beside it.

Read it with ``tfds.data_source(NAME, data_dir=DIR)`` or, into numpy arrays, with ``load_split``.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

NAME = "popjax_features"
VERSION = "1.0.0"
SPLITS = ("train", "val", "test")
LABEL_NAMES = ("unpopular", "popular")


def _features_spec(num_frames: int, feature_dim: int, max_words: int):
    import tensorflow_datasets as tfds

    f = tfds.features
    return f.FeaturesDict({
        "id": f.Text(), "split": f.Text(), "headline": f.Text(),
        "features": f.Tensor(shape=(num_frames, feature_dim), dtype=np.float16),
        "timestamps": f.Tensor(shape=(num_frames,), dtype=np.float32),
        "tokens": f.Tensor(shape=(max_words,), dtype=np.int32),
        "length": f.Scalar(dtype=np.int32),
        "views": f.Scalar(dtype=np.float64), "followers": f.Scalar(dtype=np.float64),
        "normalized_views": f.Scalar(dtype=np.float64),
        "label": f.ClassLabel(names=LABEL_NAMES),
    })


def _builder_class():
    import tensorflow_datasets as tfds

    class PopjaxFeatures(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Per-video ResNet50 frame features + headline tokens + popularity label (popjax extract)."""

        name = NAME
        VERSION = tfds.core.Version(VERSION)

        def __init__(self, *, examples: Mapping[str, list], metadata: Mapping, **kwargs):
            self._examples, self._metadata = examples, dict(metadata)
            super().__init__(file_format="array_record", **kwargs)

        def _info(self):
            m = self._metadata
            return tfds.core.DatasetInfo(
                builder=self, description=__doc__,
                features=_features_spec(m["num_frames"], m["feature_dim"], m["max_words"]),
                metadata=tfds.core.MetadataDict(m))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in SPLITS if self._examples.get(split)}

        def _generate_examples(self, split):
            for example in self._examples[split]:
                yield example["id"], example

        # TFDS prints "Downloading and preparing dataset ..." / "... downloaded and prepared" to stdout
        # whatever the logging settings; popjax extract reports its own progress.
        def _log_download_bytes(self):
            pass

        def _log_download_done(self):
            pass

    return PopjaxFeatures


def write_dataset(data_dir, examples: Iterable[Mapping], metadata: Mapping) -> Path:
    """Write all ``examples`` (dicts with the fields above) under ``data_dir``; returns the dataset dir."""
    by_split: dict[str, list] = {s: [] for s in SPLITS}
    for ex in examples:
        by_split[ex["split"]].append(dict(ex))
    for split in by_split.values():
        split.sort(key=lambda ex: ex["id"])
    builder = _builder_class()(examples=by_split, metadata=metadata, data_dir=str(data_dir))
    with _quiet_tfds():
        builder.download_and_prepare()
    return Path(builder.data_dir)


@contextlib.contextmanager
def _quiet_tfds():
    """No TFDS progress bars ("Generating splits", "Shuffling ...") and no INFO logs while writing."""
    from absl import logging as absl_logging
    from tensorflow_datasets.core.utils import tqdm_utils

    active, verbosity = getattr(tqdm_utils, "_active", True), absl_logging.get_verbosity()
    tqdm_utils.display_progress_bar(False)
    absl_logging.set_verbosity(min(verbosity, absl_logging.WARNING))   # absl: WARNING = -1 < INFO = 0
    try:
        yield
    finally:
        tqdm_utils.display_progress_bar(active)
        absl_logging.set_verbosity(verbosity)


def dataset_dir(data_dir) -> Path:
    return Path(data_dir) / NAME / VERSION


def read_metadata(data_dir) -> dict:
    """The dataset-wide metadata written by ``popjax extract`` (threshold, backbone, settings)."""
    path = dataset_dir(data_dir) / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{data_dir}: no popjax features dataset here (run `popjax extract` first)")
    return json.loads(path.read_text())


def load_split(data_dir, split: str) -> dict[str, np.ndarray]:
    """Every example of ``split`` as stacked numpy arrays (ids and texts as str), in id order."""
    import tensorflow_datasets as tfds

    source = tfds.data_source(NAME, data_dir=str(data_dir))
    if split not in source:
        return {}
    examples = sorted((source[split][i] for i in range(len(source[split]))), key=lambda ex: ex["id"])
    out = {}
    for key in examples[0] if examples else ():
        values = [ex[key] for ex in examples]
        if isinstance(values[0], bytes):
            out[key] = np.array([v.decode("utf-8") for v in values])
        else:
            out[key] = np.stack(values)
    return out

"""The extracted features dataset: a TFDS dataset in array_record files, readable without TensorFlow.

One example per video: ``id``, ``split``, ``features`` (N x 2048 ResNet50 features, float16),
``timestamps`` (the N frames' real times, s), ``headline`` (text), ``tokens`` / ``length`` (word ids into
the dataset's vocabulary), ``views``, ``followers``, ``normalized_views`` and ``label`` (1 = popular: above
the training split's median normalised views). Dataset-wide facts (the threshold, the backbone, N, the
text settings) sit in the TFDS metadata; the vocabulary and its frozen word vectors beside it.

Written shard by shard (``write_shard``: any process may write any shard, each atomically) and made one
dataset by ``write_metadata`` once all are there (``tfds.folder_dataset.write_metadata``); ``write_dataset``
does both for examples held in memory. Read it with ``tfds.data_source(NAME, data_dir=DIR)`` or, into numpy
arrays, with ``load_split``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

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


def features_spec(metadata: Mapping):
    """The TFDS features of one example, for the dataset-wide ``metadata`` (N, feature size, words)."""
    return _features_spec(metadata["num_frames"], metadata["feature_dim"], metadata["max_words"])


def shard_path(data_dir, split: str, index: int, num_shards: int) -> Path:
    """Where shard ``index`` of ``num_shards`` of ``split`` lives (TFDS's file naming)."""
    import tensorflow_datasets as tfds

    template = tfds.core.ShardedFileTemplate(data_dir=dataset_dir(data_dir), dataset_name=NAME, split=split,
                                             filetype_suffix="array_record")
    return Path(template.sharded_filepath(shard_index=index, num_shards=num_shards))


def write_shard(path, examples: Iterable[bytes]) -> int:
    """Serialized examples (``features_spec(...).serialize_example``) -> one array_record shard, atomically
    (a temporary file renamed into place); returns the bytes written."""
    from tensorflow_datasets.core.file_adapters import ArrayRecordFileAdapter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    examples = list(examples)
    ArrayRecordFileAdapter.write_examples(tmp, ((None, ex) for ex in examples))
    os.replace(tmp, path)
    return sum(len(ex) for ex in examples)


def write_metadata(data_dir, metadata: Mapping, shards: Mapping[str, Sequence[int]], num_bytes: Mapping[str, int]
                   ) -> Path:
    """Make the shards under ``data_dir`` one TFDS dataset: ``shards[split]`` = examples per shard, in shard
    order (``shard_path``); written once every shard is complete. Returns the dataset directory."""
    import tensorflow_datasets as tfds

    directory = dataset_dir(data_dir)
    splits = []
    for split, lengths in shards.items():
        template = tfds.core.ShardedFileTemplate(data_dir=directory, dataset_name=NAME, split=split,
                                                 filetype_suffix="array_record")
        splits.append(tfds.core.SplitInfo(name=split, shard_lengths=list(lengths), num_bytes=num_bytes[split],
                                          filename_template=template))
    tfds.folder_dataset.write_metadata(
        data_dir=directory, features=features_spec(metadata), split_infos=splits, check_data=False,
        description=__doc__, metadata=tfds.core.MetadataDict(metadata))
    return directory


def write_dataset(data_dir, examples: Iterable[Mapping], metadata: Mapping) -> Path:
    """All ``examples`` (dicts with the fields above) as one shard per split under ``data_dir``, in id order;
    returns the dataset dir."""
    spec = features_spec(metadata)
    by_split: dict[str, list] = {s: [] for s in SPLITS}
    for ex in examples:
        by_split[ex["split"]].append(dict(ex))
    lengths, num_bytes = {}, {}
    for split, items in by_split.items():
        if items:
            items.sort(key=lambda ex: ex["id"])
            num_bytes[split] = write_shard(shard_path(data_dir, split, 0, 1),
                                           (spec.serialize_example(ex) for ex in items))
            lengths[split] = [len(items)]
    return write_metadata(data_dir, metadata, lengths, num_bytes)


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

"""ImageNet ResNet50 weights: conversion from Keras / torchvision files, and popjax's own orbax format.

A popjax backbone directory is an orbax checkpoint with two items:

* ``variables`` -- ``{"params": ..., "batch_stats": ...}`` for ``popjax.models.ResNet50``;
* ``metadata``  -- JSON: the architecture ``variant`` the weights need (``v1`` Keras, ``v1.5`` torchvision),
  the ``preprocessing`` they were trained with, ``num_classes`` (1000 with the classifier, 0 for notop)
  and where they came from (``source``: format, file name, sha256; or ``random`` and its seed).

Nothing here unpickles: Keras files are HDF5 read with h5py, torch files are loaded with
``torch.load(weights_only=True)`` and ``.safetensors`` with the safetensors library.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Mapping

import jax
import numpy as np
from flax import traverse_util

from popjax.models.resnet import ResNet50

FORMAT_VERSION = 1

# Preprocessing the ImageNet weights expect, applied to RGB pixels in [0, 255]:
#   y = (x[..., channel_order] * scale - mean) / std
PREPROCESSING = {
    # Keras applications (caffe style): BGR, subtract the ImageNet mean, no scaling.
    "caffe": {"name": "caffe", "channel_order": "BGR", "scale": 1.0,
              "mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0]},
    # torchvision: RGB in [0, 1], ImageNet mean and std.
    "torch": {"name": "torch", "channel_order": "RGB", "scale": 1.0 / 255.0,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}
FORMATS = {"keras": ("v1", "caffe"), "torchvision": ("v1.5", "torch")}


class WeightsError(ValueError):
    """A weights file that cannot become a ResNet50 backbone; the message says exactly why."""


# --------------------------------------------------------------------------------------------- reading
def read_keras_h5(path) -> dict[str, np.ndarray]:
    """Tensors of a Keras applications .h5 file (legacy Keras-2 layout, full model or weights only).

    Returns ``{"<layer>/<weight>": array}`` with the weight names stripped of ``:0``, e.g.
    ``conv2_block1_1_conv/kernel``. Layers with no weights are skipped.
    """
    import h5py

    tensors = {}
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            raise WeightsError(f"{path}: no 'layer_names' attribute; not a Keras-2 style .h5 weights file "
                               "(Keras 3 '.weights.h5' files: re-save with model.save('x.h5'))")
        for layer in _decode(group.attrs["layer_names"]):
            names = _decode(group[layer].attrs.get("weight_names", []))
            for name in names:
                short = name.split("/")[-1].split(":")[0]
                tensors[f"{layer}/{short}"] = np.asarray(group[layer][name])
    return tensors


def read_torch(path) -> dict[str, np.ndarray]:
    """A torchvision resnet50 state dict from ``.safetensors`` or ``.pth``/``.pt`` (``weights_only``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:  # safetensors raises its own error types
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{path}: reading .pth files needs PyTorch (pip install torch); "
                           "or convert the state dict to .safetensors") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: not a loadable torch state dict ({e})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    out = {}
    for name, t in obj.items():
        if hasattr(t, "detach"):
            out[name.removeprefix("module.")] = t.detach().to(torch.float32).numpy()
    return out


def _decode(names):
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


# ---------------------------------------------------------------------------------------------- naming
_KERAS_WEIGHT = {"kernel": ("params", "kernel"), "bias": ("params", "bias"), "gamma": ("params", "scale"),
                 "beta": ("params", "bias"), "moving_mean": ("batch_stats", "mean"),
                 "moving_variance": ("batch_stats", "var")}
_TORCH_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
             "running_var": ("batch_stats", "var")}


def _keras_module(layer: str) -> str | None:
    if layer == "conv1_conv":
        return "conv1"
    if layer == "conv1_bn":
        return "bn1"
    if layer == "predictions":
        return "fc"
    m = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", layer)
    if m:
        stage, block, k, kind = m.groups()
        leaf = f"shortcut_{kind}" if k == "0" else f"{kind}{k}"
        return f"conv{stage}_block{block}/{leaf}"
    return None


def keras_to_flat(tensors: Mapping[str, np.ndarray]) -> tuple[dict, dict, list[str]]:
    """``{"params/conv1/kernel": array}`` from Keras names, the source name of each key, and the names
    that map to nothing."""
    flat, origin, unknown = {}, {}, []
    for name, value in tensors.items():
        layer, _, weight = name.rpartition("/")
        module = _keras_module(layer)
        if module is None or weight not in _KERAS_WEIGHT:
            unknown.append(name)
            continue
        collection, leaf = _KERAS_WEIGHT[weight]
        key = f"{collection}/{module}/{leaf}"
        flat[key], origin[key] = np.asarray(value, np.float32), name
    return flat, origin, unknown


def _torch_module(prefix: str) -> str | None:
    if prefix in ("conv1", "bn1", "fc"):
        return prefix
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)", prefix)
    if m:
        layer, block, part = m.groups()
        part = {"downsample.0": "shortcut_conv", "downsample.1": "shortcut_bn"}.get(part, part)
        return f"conv{int(layer) + 1}_block{int(block) + 1}/{part}"
    return None


def torchvision_to_flat(tensors: Mapping[str, np.ndarray]) -> tuple[dict, dict, list[str]]:
    """Same as ``keras_to_flat`` for torchvision names; conv kernels OIHW -> HWIO, fc (out, in) -> (in, out)."""
    flat, origin, unknown = {}, {}, []
    for name, value in tensors.items():
        prefix, _, weight = name.rpartition(".")
        module = _torch_module(prefix)
        value = np.asarray(value, np.float32)
        is_bn = module is not None and module.rsplit("/", 1)[-1].startswith(("bn", "shortcut_bn"))
        if module is not None and weight == "num_batches_tracked":
            continue
        if module is None or (is_bn and weight not in _TORCH_BN) or (not is_bn and weight not in ("weight", "bias")):
            unknown.append(name)
            continue
        if is_bn:
            collection, leaf = _TORCH_BN[weight]
            key = f"{collection}/{module}/{leaf}"
        elif weight == "weight":
            key, value = f"params/{module}/kernel", value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        else:
            key = f"params/{module}/bias"
        flat[key], origin[key] = value, name
    return flat, origin, unknown


# ------------------------------------------------------------------------------------------ validation
def expected_shapes(variant: str, num_classes: int) -> dict[str, tuple]:
    """Flat ``collection/module/.../leaf -> shape`` of a ResNet50's variables, without computing them."""
    model = ResNet50(variant=variant, num_classes=num_classes)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32)))
    flat = traverse_util.flatten_dict(shapes, sep="/")
    return {k: v.shape for k, v in flat.items() if k.split("/")[0] in ("params", "batch_stats")}


def check_complete(flat: Mapping[str, np.ndarray], origin: Mapping[str, str], unknown: list[str], variant: str,
                   num_classes: int, source: str) -> None:
    """Raise ``WeightsError`` naming every missing, unexpected or wrongly shaped tensor."""
    want = expected_shapes(variant, num_classes)
    problems = []
    missing = sorted(set(want) - set(flat))
    if missing:
        problems.append(f"{len(missing)} missing tensors: {', '.join(missing[:12])}"
                        + (" ..." if len(missing) > 12 else ""))
    unknown = sorted(unknown) + sorted(origin[k] for k in set(flat) - set(want))
    if unknown:
        problems.insert(0, f"{len(unknown)} unexpected tensors: {', '.join(unknown[:12])}"
                        + (" ..." if len(unknown) > 12 else ""))
    wrong = [f"{k} ({origin[k]}) has shape {tuple(flat[k].shape)}, expected {want[k]}"
             for k in sorted(set(want) & set(flat)) if tuple(flat[k].shape) != tuple(want[k])]
    if wrong:
        problems.append(f"{len(wrong)} wrong shapes: " + "; ".join(wrong[:8]))
    if problems:
        raise WeightsError(f"{source}: not a ResNet50 {variant} weights file: " + " | ".join(problems))


# ------------------------------------------------------------------------------------------ conversion
def convert(fmt: str, path, out_dir) -> dict:
    """Convert a Keras (.h5) or torchvision (.pth/.safetensors) ResNet50 file to a popjax backbone dir.

    Returns the metadata written. Raises ``WeightsError`` (with the reason) for anything that is not a
    complete ResNet50 of the expected variant.
    """
    if fmt not in FORMATS:
        raise WeightsError(f"unknown weights format {fmt!r}; expected one of {sorted(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    variant, preprocessing = FORMATS[fmt]
    if fmt == "keras":
        flat, origin, unknown = keras_to_flat(read_keras_h5(path))
    else:
        flat, origin, unknown = torchvision_to_flat(read_torch(path))
    num_classes = int(flat["params/fc/kernel"].shape[-1]) if "params/fc/kernel" in flat else 0
    check_complete(flat, origin, unknown, variant, num_classes, str(path))
    metadata = {
        "format_version": FORMAT_VERSION, "arch": "resnet50", "variant": variant, "num_classes": num_classes,
        "image_size": 224, "preprocessing": PREPROCESSING[preprocessing], "pretrained": True,
        "source": {"format": fmt, "file": path.name, "sha256": _sha256(path)},
    }
    save_backbone(out_dir, traverse_util.unflatten_dict(flat, sep="/"), metadata)
    return metadata


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ orbax I/O
def save_backbone(out_dir, variables: Mapping, metadata: Mapping) -> None:
    """Write ``variables`` + ``metadata`` as one orbax checkpoint (atomic: orbax commits on success)."""
    import orbax.checkpoint as ocp

    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise WeightsError(f"{out_dir}: exists and is not empty; choose a new --out directory")
    if out_dir.exists():
        try:
            out_dir.rmdir()   # empty: orbax makes it itself (several processes saving together may race here)
        except FileNotFoundError:
            pass
    variables = jax.tree.map(np.asarray, dict(variables))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
        ckpt.save(out_dir, ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                              metadata=ocp.args.JsonSave(dict(metadata))))


def load_backbone(directory) -> tuple[dict, dict]:
    """``(variables, metadata)`` of a directory written by ``save_backbone`` / ``convert``."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if not (directory / "metadata").is_dir() or not (directory / "variables").is_dir():
        raise WeightsError(f"{directory}: not a popjax backbone directory (make one with "
                           "`popjax convert-weights`)")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
        restored = ckpt.restore(directory, ocp.args.Composite(variables=ocp.args.StandardRestore(),
                                                               metadata=ocp.args.JsonRestore()))
    metadata = dict(restored["metadata"])
    if metadata.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{directory}: backbone format {metadata.get('format_version')} is not "
                           f"{FORMAT_VERSION}; re-run `popjax convert-weights`")
    return jax.tree.map(np.asarray, dict(restored["variables"])), metadata

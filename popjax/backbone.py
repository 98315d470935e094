"""The frame encoder: uint8 RGB frames -> ResNet50 penultimate features x_i in R^2048 (paper Sec. 2).

``Backbone.load(dir)`` uses converted ImageNet weights (``popjax convert-weights``) and the preprocessing
recorded with them; ``Backbone.random(seed)`` is a randomly initialised ResNet50 for the offline demo, and
says so in ``description`` and ``metadata`` (every output that depends on it records them).
"""
from __future__ import annotations

import functools
import json
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from popjax import parallel, runtime
from popjax.models.resnet import ResNet50
from popjax.ops import cpu_conv
from popjax.weights import FORMAT_VERSION, PREPROCESSING, load_backbone

KERNELS = ("auto", "cpu", "xla")
DTYPES = ("float32", "bfloat16", "auto")
IMAGE_SIZES = (32, 4096)   # the input sides a backbone takes, pixels (at 32 its last feature map is one cell)


def resolve_dtype(dtype="float32") -> jnp.dtype:
    """The compute dtype a backbone uses for ``dtype`` (``DTYPES`` or a dtype): ``"auto"`` is bfloat16 where
    the devices compute it in hardware (``runtime.native_bfloat16``: TPUs, recent GPUs, CPUs with bf16 dot
    instructions) and float32 elsewhere."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype = {dtype!r}: expected one of {DTYPES}")
        if dtype == "auto":
            dtype = "bfloat16" if runtime.native_bfloat16() else "float32"
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"dtype = {dtype}: expected float32 or bfloat16")
    return dtype


def image_size_problem(image_size) -> str | None:
    """What is wrong with an input side setting (0: the backbone's own), or None."""
    low, high = IMAGE_SIZES
    if isinstance(image_size, bool) or not isinstance(image_size, int) or (image_size and not low <= image_size <= high):
        return f"expected 0 (the backbone's own) or {low} .. {high} pixels"
    return None


def cpu_kernels(kernels: str = "auto") -> bool:
    """Whether a backbone computes its layers in ``popjax.ops.cpu_conv``'s forms (Winograd, shifted and
    pointwise products, bf16 max pool) rather than XLA's own: ``"auto"``, only when JAX runs on the CPU;
    ``"cpu"`` / ``"xla"``: always / never."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels = {kernels!r}: expected one of {KERNELS}")
    return jax.default_backend() == "cpu" if kernels == "auto" else kernels == "cpu"


def resnet50(kernels: str = "auto", **kwargs):
    """``ResNet50(**kwargs)`` with the layers ``kernels`` selects (``cpu_kernels``); same parameters either way."""
    if cpu_kernels(kernels):
        kwargs.update(conv=cpu_conv.conv, max_pool=cpu_conv.max_pool)
    return ResNet50(**kwargs)


def preprocess(frames, spec: Mapping[str, Any], image_size: int = 224):
    """uint8 RGB [..., H, W, 3] -> float32 [..., S, S, 3] as the weights expect.

    The whole frame is resized to S x S (no crop: explanations must cover every region of the frame),
    bilinearly with antialiasing, then ``(x[..., order] * scale - mean) / std`` per ``spec``.
    """
    x = jnp.asarray(frames, jnp.float32)
    if x.shape[-3:-1] != (image_size, image_size):
        x = jax.image.resize(x, x.shape[:-3] + (image_size, image_size, 3), "linear", antialias=True)
    if spec["channel_order"] == "BGR":
        x = x[..., ::-1]
    mean = jnp.asarray(spec["mean"], jnp.float32)
    std = jnp.asarray(spec["std"], jnp.float32)
    return (x * spec["scale"] - mean) / std


def call_buckets(batch_size: int, multiple: int, count: int = 4) -> tuple[int, ...]:
    """The sizes a backbone call is padded to: ``multiple`` (one frame per device), ``batch_size`` and about its
    1/2, 1/4, ... (``count`` sizes), each rounded up to a ``multiple`` (the device count, so that every device
    gets an equal share)."""
    halves = {parallel.round_up(-(-batch_size // 2 ** k), multiple) for k in range(count)}
    return tuple(sorted(halves | {min(multiple, batch_size)}))


def _one_shot_options(mesh) -> dict | None:
    """Compiler options of the programs that run once per backbone (initialisation, BatchNorm calibration):
    on CPU devices LLVM's -O1, which compiles them in a fraction of the time; elsewhere XLA's defaults."""
    return {"xla_backend_optimization_level": 1} if mesh.devices.flat[0].platform == "cpu" else None


# The compiled programs are shared by every backbone of one model, preprocessing and mesh (a backbone
# calibrated, saved and loaded again finds its programs compiled).
@functools.lru_cache(maxsize=None)
def _forward_program(model, spec: str, image_size: int, mesh) -> Callable:
    preprocessing = json.loads(spec)
    return jax.jit(lambda variables, frames: model.apply(variables, preprocess(
        frames, preprocessing, image_size))["features"], out_shardings=parallel.batch_sharding(mesh))


@functools.lru_cache(maxsize=None)
def _calibration_program(model, spec: str, image_size: int, mesh) -> Callable:
    """variables, uint8 frames (split over the mesh) -> the BatchNorm statistics of one train-mode pass."""
    preprocessing, model = json.loads(spec), model.clone(bn_momentum=0.0)

    def statistics(variables, frames):
        x = preprocess(frames, preprocessing, image_size)
        return model.apply(variables, x, train=True, mutable=["batch_stats"])[1]["batch_stats"]

    return jax.jit(statistics, out_shardings=parallel.replicated(mesh), compiler_options=_one_shot_options(mesh))


class Backbone:
    """ResNet50 with its variables and metadata; ``features`` is jit-compiled, batched and sharded
    over this process's devices.

    ``dtype``: float32 (true float32 on every platform), bfloat16 (the fast path) or ``"auto"``
    (``resolve_dtype``). ``kernels``: the layers' forms (``KERNELS``; ``"auto"``: ``popjax.ops.cpu_conv``'s on
    the CPU, XLA's own elsewhere).
    """

    def __init__(self, variables: Mapping, metadata: Mapping, *, dtype=jnp.float32, batch_size: int = 32,
                 mesh=None, buckets: Sequence[int] | None = None, kernels: str = "auto"):
        self.metadata = dict(metadata)
        self.dtype = resolve_dtype(dtype)
        self.kernels = kernels
        self.model = resnet50(kernels, variant=self.metadata["variant"], num_classes=self.metadata["num_classes"],
                              dtype=self.dtype)
        self.mesh = mesh if mesh is not None else parallel.local_mesh()
        self.batch_size = parallel.round_up(batch_size, self.mesh.size)
        # The padded sizes of calls below batch_size (``()``: every call is a full batch, one program).
        self.buckets = call_buckets(self.batch_size, self.mesh.size) if buckets is None else tuple(sorted(
            {parallel.round_up(b, self.mesh.size) for b in buckets if 0 < b < self.batch_size} | {self.batch_size}))
        self.variables = jax.device_put(
            {"params": variables["params"], "batch_stats": variables["batch_stats"]},
            parallel.replicated(self.mesh))
        self._spec = json.dumps(self.metadata["preprocessing"], sort_keys=True)
        self._features = _forward_program(self.model, self._spec, self.metadata["image_size"], self.mesh)

    # ------------------------------------------------------------------------------------ constructors
    @classmethod
    def load(cls, directory, **kwargs) -> "Backbone":
        """A backbone converted with ``popjax convert-weights`` (see ``popjax.weights``)."""
        variables, metadata = load_backbone(directory)
        metadata["path"] = str(directory)
        return cls(variables, metadata, **kwargs)

    @classmethod
    def random(cls, seed: int = 0, *, variant: str = "v1.5", residual_scale_init: float = 1.0,
               image_size: int = 224, **kwargs) -> "Backbone":
        """A randomly initialised ResNet50 (He init); NOT ImageNet-pretrained.

        ``residual_scale_init`` is the initial gamma of each block's last BatchNorm. At 0 every residual branch
        outputs 0 and the network sees only ~11-pixel patches; at 1 a random network mixes local evidence away;
        the demo's small value keeps a planted cue learnable while seeing the whole frame. ``image_size``: the
        side its frames are resized to (the same weights at every size: the network is fully convolutional up
        to its global pooling; the last feature map is ``ceil(image_size / 32)`` cells wide).
        """
        if not image_size or image_size_problem(image_size):
            raise ValueError(f"image_size = {image_size!r}: expected {IMAGE_SIZES[0]} .. {IMAGE_SIZES[1]} pixels")
        model = resnet50(kwargs.get("kernels", "auto"), variant=variant, residual_scale_init=residual_scale_init)
        mesh = kwargs["mesh"] if kwargs.get("mesh") is not None else parallel.local_mesh()
        init = jax.jit(model.init, compiler_options=_one_shot_options(mesh))
        variables = init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))
        metadata = {"format_version": FORMAT_VERSION, "arch": "resnet50", "variant": variant, "num_classes": 0,
                    "image_size": image_size,
                    "preprocessing": PREPROCESSING["torch"], "pretrained": False,
                    "source": {"format": "random", "seed": seed, "residual_scale_init": residual_scale_init}}
        return cls(variables, metadata, **kwargs)

    def calibrate(self, frames) -> "Backbone":
        """A copy whose BatchNorm statistics are re-estimated on ``frames`` (one train-mode pass, split over
        the devices when they divide the frames evenly; the statistics are those of all the frames).

        For a random backbone the default statistics (mean 0, variance 1) are meaningless; re-estimating
        them on frames of the corpus keeps every layer's activations standardised.
        """
        frames = np.asarray(frames)
        program = _calibration_program(self.model, self._spec, self.metadata["image_size"], self.mesh)
        batch_stats = program(self.variables, jax.device_put(frames, parallel.split_sharding(self.mesh, frames.shape)))
        variables = {"params": self.variables["params"], "batch_stats": batch_stats}
        metadata = {**self.metadata, "source": {**self.metadata["source"], "bn_calibration_frames": len(frames)}}
        return Backbone(jax.device_get(variables), metadata, dtype=self.dtype, batch_size=self.batch_size,
                        mesh=self.mesh, buckets=self.buckets, kernels=self.kernels)

    def compile(self) -> "Backbone":
        """Compile ``features``' program for a full batch of ``image_size`` frames now, kernel transforms
        included, rather than on the first call; returns ``self``. Every backbone of the same model,
        preprocessing, batch size and devices shares it (e.g. this one once calibrated, saved and loaded), so
        it can compile in a thread while other work goes on."""
        size = self.metadata["image_size"]
        frames = jax.ShapeDtypeStruct((self.batch_size, size, size, 3), np.uint8,
                                      sharding=parallel.batch_sharding(self.mesh))
        self._features.lower(self.inference_variables, frames).compile()
        return self

    # ------------------------------------------------------------------------------------------- use
    @property
    def description(self) -> str:
        src = self.metadata["source"]
        if not self.metadata.get("pretrained"):
            extra = f", BN calibrated on {src['bn_calibration_frames']} frames" if "bn_calibration_frames" in src else ""
            return (f"random ResNet50 {self.metadata['variant']} (seed {src.get('seed')}, residual scale "
                    f"{src.get('residual_scale_init')}{extra}); NOT ImageNet-pretrained")
        return f"ImageNet ResNet50 {self.metadata['variant']} converted from {src['format']} file {src['file']}"

    @functools.cached_property
    def inference_variables(self) -> dict:
        """What inference runs on: the variables plus, with the CPU layers, the Winograd layers' transformed
        kernels, computed on first use (a backbone only calibrated or saved never needs them)."""
        if not cpu_kernels(self.kernels):
            return self.variables
        return {**self.variables, **jax.device_put(
            cpu_conv.winograd_kernels(self.model, self.variables, self.metadata["image_size"]),
            parallel.replicated(self.mesh))}

    def preprocess(self, frames):
        return preprocess(frames, self.metadata["preprocessing"], self.metadata["image_size"])

    def features(self, frames) -> np.ndarray:
        """uint8 RGB frames [N, H, W, 3] (any H, W) -> float32 [N, 2048], in batches of ``batch_size``.

        A call, or the last part of one, smaller than ``batch_size`` is padded to the smallest of ``buckets``
        that holds it (by default ``call_buckets``: the batch size, about its half, quarter and eighth, and the
        device count), not to the whole batch. Each bucket size, and each frame size, compiles once per
        process on first use (the persistent compilation cache keeps the programs between runs)."""
        return self.features_async(frames)()

    def features_async(self, frames) -> Callable[[], np.ndarray]:
        """``features``, dispatched: the batches are sent to the devices and queued, and their results start
        copying to the host; the returned function waits for them and returns the float32 [N, 2048] array.
        The host can prepare (and dispatch) the next call meanwhile, so the devices never wait for it."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB frames [N, H, W, 3], got {frames.dtype} {frames.shape}")
        sharding = parallel.batch_sharding(self.mesh)
        outputs = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start:start + self.batch_size]
            chunk = parallel.pad_batch(chunk, next(b for b in self.buckets if b >= len(chunk)))
            outputs.append(self._features(self.inference_variables, jax.device_put(chunk, sharding)))
            outputs[-1].copy_to_host_async()
        n = len(frames)

        def result() -> np.ndarray:
            if not outputs:
                return np.zeros((0, 2048), np.float32)
            return np.concatenate([np.asarray(o, np.float32) for o in outputs])[:n]

        return result

"""ResNet50 (He et al., 2015), the frame encoder of the paper (Sec. 2, "Video frames").

NHWC, inference-mode BatchNorm unless ``train=True``, computation in ``dtype`` (e.g. bfloat16) with
float32 parameters. Two ImageNet variants exist and their weights are not interchangeable:

* ``v1``   -- Keras applications: convolutions carry a bias, BatchNorm epsilon 1.001e-5, and a
  downsampling block strides in its first 1x1 convolution.
* ``v1.5`` -- torchvision: no convolution bias, epsilon 1e-5, and the stride sits in the 3x3.

The output of the last convolutional stage, the paper's A in R^{K x K x F} (K = 7, F = 2048 at 224 px),
is sown as ``intermediates/last_conv`` and has a zero ``perturbations/last_conv`` added to it, so that
``jax.grad`` with respect to that perturbation gives dS/dA for Grad-CAM (``popjax.explain.gradcam``).
Parameter names follow the Keras applications layers (``conv2_block1/conv1`` is ``conv2_block1_1_conv``).

The layers are flax's (``nn.Conv``, ``nn.max_pool``: XLA's own, cuDNN on NVIDIA GPUs) unless others with the
same signature and parameters are passed as ``conv`` and ``max_pool`` (``popjax.Backbone`` passes
``popjax.ops.cpu_conv``'s on a CPU). Precision: ``dtype=float32`` computes in true float32 on every platform
(``Precision.HIGHEST``: no TF32 on GPUs, no bf16 passes on TPUs); ``bfloat16`` is the fast path.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

VARIANTS = ("v1", "v1.5")
BN_EPSILON = {"v1": 1.001e-5, "v1.5": 1e-5}
RESNET50_STAGES = (3, 4, 6, 3)

# He initialisation, as torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu").
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def precision(dtype):
    """True float32 products for float32 layers on every platform; the platform's default (bf16) otherwise."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block: y = relu(shortcut(x) + bn3(conv3(...)))."""

    filters: int
    strides: int
    projection: bool
    variant: str
    conv: Any
    norm: Any
    residual_scale_init: float = 1.0

    @nn.compact
    def __call__(self, x):
        stride_1x1, stride_3x3 = (self.strides, 1) if self.variant == "v1" else (1, self.strides)
        y = self.conv(self.filters, (1, 1), (stride_1x1,) * 2, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), (stride_3x3,) * 2, padding=((1, 1), (1, 1)), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(4 * self.filters, (1, 1), name="conv3")(y)
        y = self.norm(name="bn3", scale_init=nn.initializers.constant(self.residual_scale_init))(y)
        if self.projection:
            x = self.conv(4 * self.filters, (1, 1), (self.strides,) * 2, name="shortcut_conv")(x)
            x = self.norm(name="shortcut_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """Bottleneck ResNet; ``ResNet50`` fixes ``stage_sizes=(3, 4, 6, 3)``, ``width=64``.

    ``__call__(x)`` takes preprocessed images [B, H, W, 3] and returns ``{"features": [B, 4*8*width]}``
    (global average pool of A, the 2048-d penultimate feature of the paper) plus ``"logits"`` when
    ``num_classes > 0``. Both are float32 whatever ``dtype`` is.
    """

    stage_sizes: Sequence[int] = RESNET50_STAGES
    width: int = 64
    variant: str = "v1.5"
    num_classes: int = 0
    dtype: Any = jnp.float32
    residual_scale_init: float = 1.0  # initial gamma of each block's last BN (0 = "zero-init residual")
    bn_momentum: float = 0.9  # 0 makes a train-mode pass set the statistics to the batch's own
    conv: Callable = nn.Conv          # a layer with nn.Conv's signature and parameters
    max_pool: Callable = nn.max_pool  # a function with nn.max_pool's signature

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown ResNet variant {self.variant!r}; expected one of {VARIANTS}")
        conv = functools.partial(
            self.conv, padding=((0, 0), (0, 0)), use_bias=self.variant == "v1", kernel_init=he_normal,
            dtype=self.dtype, param_dtype=jnp.float32, precision=precision(self.dtype))
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
            epsilon=BN_EPSILON[self.variant], dtype=self.dtype, param_dtype=jnp.float32)

        x = jnp.asarray(x, self.dtype)
        x = conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = self.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                x = Bottleneck(
                    filters=self.width * 2**stage,
                    strides=2 if stage > 0 and block == 0 else 1,
                    projection=block == 0,
                    variant=self.variant, conv=conv, norm=norm,
                    residual_scale_init=self.residual_scale_init,
                    name=f"conv{stage + 2}_block{block + 1}")(x)
        # A: the last convolutional output, K x K x F.
        x = self.perturb("last_conv", x)
        self.sow("intermediates", "last_conv", x)
        out = {"features": jnp.mean(x.astype(jnp.float32), axis=(1, 2))}
        if self.num_classes:
            out["logits"] = nn.Dense(self.num_classes, dtype=jnp.float32, precision=precision(jnp.float32), name="fc")(out["features"])
        return out


ResNet50 = functools.partial(ResNet, stage_sizes=RESNET50_STAGES, width=64)

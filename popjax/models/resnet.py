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
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

VARIANTS = ("v1", "v1.5")
BN_EPSILON = {"v1": 1.001e-5, "v1.5": 1e-5}
RESNET50_STAGES = (3, 4, 6, 3)

# He initialisation, as torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu").
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class PointwiseConv(nn.Module):
    """A 1x1 convolution computed as a matrix product over channels.

    Same parameters (``kernel`` [1, 1, C, F], ``bias``), initialisation and result as ``nn.Conv`` with a
    1x1 kernel, but XLA's CPU backend runs it 1.4-5x faster as a dot than as a convolution
    (benchmarks/RESULTS.md); a stride s is a subsampling of the input first.
    """

    features: int
    strides: tuple = (1, 1)
    use_bias: bool = False
    kernel_init: Any = he_normal
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype)
        x = x[:, ::self.strides[0], ::self.strides[1]].astype(self.dtype)
        # float32 accumulation whatever dtype is: XLA:CPU runs a bfloat16 dot with a float32 result on the
        # CPU's bf16 dot-product instructions (2x float32), and a bfloat16-result dot in float32.
        y = jnp.einsum("bhwc,cf->bhwf", x, kernel[0, 0].astype(self.dtype),
                       preferred_element_type=jnp.float32).astype(self.dtype)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype).astype(self.dtype)
        return y


def shifted_conv(x, kernel, strides):
    """y[h, w] = sum_ij x[s*h + i, s*w + j] @ W[i, j] (x padded already): a k x k convolution as k^2 matrix
    products over channels, accumulated in float32."""
    kh, kw = kernel.shape[:2]
    sh, sw = strides
    out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    return sum(jnp.einsum("bhwc,cf->bhwf", x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw],
                          kernel[i, j], preferred_element_type=jnp.float32)
               for i in range(kh) for j in range(kw))


# Winograd F(2x2, 3x3) (Lavin & Gray, 2016): Y = A^T [(G g G^T) * (B^T d B)] A on 4x4 input tiles d, stride 2.
WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _winograd_input(t):
    """B^T t along the first axis of the 4-list t: (d0 - d2, d1 + d2, d2 - d1, d1 - d3)."""
    return [t[0] - t[2], t[1] + t[2], t[2] - t[1], t[1] - t[3]]


def _winograd_output(m):
    """A^T m along the first axis of the 4-list m: (m0 + m1 + m2, m1 - m2 - m3)."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def winograd_conv3x3(x, kernel):
    """A 3x3, stride-1, pad-1 convolution of x [B, H, W, C] (H, W even) by Winograd F(2x2, 3x3), in float32:
    16 matrix products over channels on (H/2 x W/2) tiles instead of 9 on H x W pixels (2.25x fewer
    multiplications; float32 error ~1e-6 of the result)."""
    b, h, w, c = x.shape
    th, tw = h // 2, w // 2
    xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = _winograd_input([xp[:, i:i + 2 * th - 1:2] for i in range(4)])
    v = jnp.stack([t for r in rows for t in _winograd_input([r[:, :, j:j + 2 * tw - 1:2] for j in range(4)])])
    g = jnp.asarray(WINOGRAD_G, jnp.float32)
    u = jnp.einsum("ki,ijcf,lj->klcf", g, kernel.astype(jnp.float32), g).reshape(16, c, -1)
    m = jnp.einsum("nbhwc,ncf->nbhwf", v, u).reshape(4, 4, b, th, tw, -1)
    rows = _winograd_output(list(m))                                    # the tile's 2 output rows
    y = jnp.stack([jnp.stack(_winograd_output(list(r)), axis=3) for r in rows], axis=2)   # [B, th, 2, tw, 2, F]
    return y.reshape(b, h, w, -1)


class Conv(nn.Module):
    """A k x k convolution with ``nn.Conv``'s parameters (``kernel`` [k, k, C, F], ``bias``), initialisation and
    result for explicit ``padding``, computed the fastest way measured on a CPU (``benchmarks/conv_layers.py``,
    one device, batch 32; ``benchmarks/RESULTS.md``):

    * float32, 3x3 stride 1, even size >= ``winograd_min_size``: ``winograd_conv3x3`` (56x56x64 1.56x,
      28x28x128 1.28x, 14x14x256 1.41x XLA's convolution; whole ResNet50 on 2 cores 20.7 -> 22.1 frames/s;
      in bf16 it lost in the network, 33.5 -> 32.5, so bf16 does not use it);
    * bfloat16, outputs of at most ``shifted_max_size`` px: ``shifted_conv``, bf16 products with float32
      results, which XLA:CPU runs on the CPU's bf16 dot instructions and its bf16 convolutions do not
      (alone: 7x7 2.0x, 14x14 1.7x, 28x28 1.2x, 56x56 1.7x, the stem 0.03x; in the whole bf16 ResNet50,
      shifted products for outputs up to 0 / 7 / 14 / 28 / 56 px: 26.1 / 26.9 / 29.3 / 31.4 / 28.7 frames/s);
    * else ``lax.conv_general_dilated``.
    """

    features: int
    kernel_size: tuple
    strides: tuple = (1, 1)
    padding: Any = ((0, 0), (0, 0))
    use_bias: bool = False
    kernel_init: Any = he_normal
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    shifted_max_size: int = 28
    winograd_min_size: int = 14

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features),
                            self.param_dtype).astype(self.dtype)
        x = x.astype(self.dtype)
        out_size = max((n + sum(p) - k) // s + 1
                       for n, p, k, s in zip(x.shape[1:3], self.padding, self.kernel_size, self.strides))
        shifted = jnp.dtype(self.dtype) == jnp.bfloat16 and out_size <= self.shifted_max_size
        winograd = (jnp.dtype(self.dtype) == jnp.float32 and tuple(self.kernel_size) == (3, 3)
                    and tuple(self.strides) == (1, 1)
                    and tuple(map(tuple, self.padding)) == ((1, 1), (1, 1))
                    and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0 and min(x.shape[1:3]) >= self.winograd_min_size)
        if shifted:
            y = shifted_conv(jnp.pad(x, ((0, 0), *self.padding, (0, 0))), kernel, self.strides).astype(self.dtype)
        elif winograd:
            y = winograd_conv3x3(x, kernel).astype(self.dtype)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, self.strides, self.padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype).astype(self.dtype)
        return y


def conv_layer(features, kernel_size, strides=(1, 1), *, padding=((0, 0), (0, 0)), name=None, **kwargs):
    """``Conv``, or ``PointwiseConv`` for 1x1 kernels (identical parameters, faster on CPU)."""
    if tuple(kernel_size) == (1, 1):
        kwargs.pop("padding", None)
        return PointwiseConv(features, tuple(strides), name=name, **kwargs)
    return Conv(features, tuple(kernel_size), tuple(strides), padding, name=name, **kwargs)


def max_pool_3x3_s2(x):
    """``nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))``; in bfloat16 as the maximum of strided
    slices, rows then columns (XLA:CPU's bfloat16 reduce-window is 5x slower than its float32 one)."""
    if x.dtype != jnp.bfloat16:
        return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    h, w = (x.shape[1] + 1) // 2, (x.shape[2] + 1) // 2
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    x = functools.reduce(jnp.maximum, [x[:, i:i + 2 * h - 1:2] for i in range(3)])
    return functools.reduce(jnp.maximum, [x[:, :, j:j + 2 * w - 1:2] for j in range(3)])


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

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown ResNet variant {self.variant!r}; expected one of {VARIANTS}")
        conv = functools.partial(
            conv_layer, use_bias=self.variant == "v1", kernel_init=he_normal, dtype=self.dtype,
            param_dtype=jnp.float32)
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
            epsilon=BN_EPSILON[self.variant], dtype=self.dtype, param_dtype=jnp.float32)

        x = jnp.asarray(x, self.dtype)
        x = conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = max_pool_3x3_s2(x)
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
            out["logits"] = nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(out["features"])
        return out


ResNet50 = functools.partial(ResNet, stage_sizes=RESNET50_STAGES, width=64)

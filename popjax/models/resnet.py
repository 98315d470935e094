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

On the CPU the convolutions are computed in the forms XLA:CPU runs fastest (``Conv``, ``PointwiseConv``;
same parameters and results as ``nn.Conv``); ``winograd_kernels`` precomputes the Winograd layers' kernel
transforms as an optional ``winograd`` variable collection for inference. On a GPU or TPU every layer is
XLA's own (cuDNN on NVIDIA GPUs); ``ResNet(kernels="xla")`` forces that path anywhere (``"cpu"``: the rewrites
anywhere). Precision: ``dtype=float32`` computes in true float32 on every platform (``Precision.HIGHEST``:
no TF32 on GPUs, no bf16 passes on TPUs); ``bfloat16`` is the fast path (float32 accumulation).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype)
        x = x.astype(self.dtype)
        if not cpu_kernels(self.kernels):
            y = xla_conv(x, kernel.astype(self.dtype), self.strides, ((0, 0), (0, 0)))
        else:
            # float32 accumulation whatever dtype is: XLA:CPU runs a bfloat16 dot with a float32 result on the
            # CPU's bf16 dot-product instructions (2x float32), and a bfloat16-result dot in float32.
            y = jnp.einsum("bhwc,cf->bhwf", x[:, ::self.strides[0], ::self.strides[1]],
                           kernel[0, 0].astype(self.dtype), preferred_element_type=jnp.float32,
                           precision=precision(self.dtype)).astype(self.dtype)
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
                          kernel[i, j], preferred_element_type=jnp.float32, precision=precision(x.dtype))
               for i in range(kh) for j in range(kw))


# Winograd F(m x m, 3x3) (Lavin & Gray, 2016): Y = A^T [(G g G^T) * (B^T d B)] A on (m+2) x (m+2) input
# tiles d at stride m, for m = 2 (points 0, +-1) and m = 4 (points 0, +-1, +-2).
WINOGRAD = {
    2: {"BT": ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        "G": ((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1)),
        "AT": ((1, 1, 1, 0), (0, 1, -1, -1))},
    4: {"BT": ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
               (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
        "G": ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
              (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
        "AT": ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))},
}


def _combine(matrix, ts):
    """[sum_j M[i, j] t_j for each row i of M], skipping zero coefficients (XLA fuses these into one pass)."""
    out = []
    for row in matrix:
        terms = [t if c == 1 else -t if c == -1 else c * t for c, t in zip(row, ts) if c != 0]
        out.append(functools.reduce(jnp.add, terms))
    return out


def winograd_kernel(kernel, tile: int, dtype=jnp.float32):
    """U = G g G^T of a 3x3 kernel g [3, 3, C, F], as [(tile+2)^2, C, F], computed in float32 as one matrix
    product, vec(U) = (G kron G) vec(g) over the C x F kernels (6-17x faster than the two-sided product,
    whose 3-long contractions XLA:CPU runs slowly)."""
    g = np.asarray(WINOGRAD[tile]["G"], np.float64)
    u = jnp.dot(jnp.asarray(np.kron(g, g), jnp.float32), kernel.astype(jnp.float32).reshape(9, -1),
                precision=jax.lax.Precision.HIGHEST)
    return u.reshape(-1, *kernel.shape[2:]).astype(dtype)


def winograd_conv3x3(x, u, tile: int):
    """A 3x3, stride-1, pad-1 convolution of x [B, H, W, C] with U = ``winograd_kernel(g, tile)``, by Winograd
    F(tile x tile, 3x3): (tile+2)^2 matrix products over channels on (H/tile x W/tile) tiles instead of 9 on
    H x W pixels (2.25x fewer multiplications for tile 2, 4x for tile 4; H, W padded up to a multiple of
    tile). Transforms in float32; the products in U's dtype with float32 results (bf16 U: the CPU's bf16
    dot instructions). float32 error ~1e-6 (tile 2) / ~1e-5 (tile 4) of the result."""
    bt, at = WINOGRAD[tile]["BT"], WINOGRAD[tile]["AT"]
    n = tile + 2
    b, h, w, _ = x.shape
    th, tw = -(-h // tile), -(-w // tile)
    xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (1, 1 + th * tile - h), (1, 1 + tw * tile - w), (0, 0)))
    # Each transform acts on one axis of a stacked array at a time (few HLO ops: 2-4x faster to compile
    # than per-tile-element expressions, same speed).
    r = jnp.stack(_combine(bt, [xp[:, i:i + tile * (th - 1) + 1:tile] for i in range(n)]))          # B^T d
    v = jnp.stack(_combine(bt, [r[:, :, :, j:j + tile * (tw - 1) + 1:tile] for j in range(n)]), 1)  # (B^T d) B
    m = jnp.einsum("nbhwc,ncf->nbhwf", v.reshape(n * n, b, th, tw, -1).astype(u.dtype), u,
                   preferred_element_type=jnp.float32, precision=precision(u.dtype)).reshape(n, n, b, th, tw, -1)
    rows = jnp.stack(_combine(at, list(m)), axis=3)                 # A^T M: [n, B, th, tile, tw, F]
    y = jnp.stack(_combine(at, list(rows)), axis=4)                 # (A^T M) A: [B, th, tile, tw, tile, F]
    return y.reshape(b, th * tile, tw * tile, -1)[:, :h, :w]


KERNELS = ("auto", "cpu", "xla")


def cpu_kernels(kernels: str = "auto") -> bool:
    """Whether the layers use the forms rewritten for XLA:CPU (Winograd, shifted and pointwise products,
    bf16 max pool): ``"auto"``, only when JAX runs on the CPU; ``"cpu"`` / ``"xla"``: always / never."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels = {kernels!r}: expected one of {KERNELS}")
    return jax.default_backend() == "cpu" if kernels == "auto" else kernels == "cpu"


def precision(dtype):
    """True float32 products for float32 layers on every platform; the platform's default (bf16) otherwise."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def xla_conv(x, kernel, strides, padding):
    """XLA's own convolution (cuDNN on NVIDIA GPUs), float32 results in float32 precision."""
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=precision(x.dtype))


def winograd_tile(dtype, kernel_size, strides, padding, size, kernels: str = "auto") -> int:
    """The Winograd tile ``Conv`` uses for a layer (0: none), from single layers and the whole ResNet50 on
    this CPU (benchmarks/conv_layers.py, benchmarks/RESULTS.md): 3x3 stride-1 pad-1 layers only; float32:
    tile 4 (ResNet50 on 2 cores: 24.6 frames/s, tile 2 at 56 px 23.7, tile 2 everywhere 22.8); bfloat16:
    tile 2 at 28 px and below (tile 4's bf16 error is 5e-2; at 56 px tile 2 is no faster in the network than
    XLA's convolution, and less exact)."""
    if not cpu_kernels(kernels) or (tuple(kernel_size), tuple(strides), tuple(map(tuple, padding))) != (
            (3, 3), (1, 1), ((1, 1), (1, 1))):
        return 0
    if jnp.dtype(dtype) == jnp.bfloat16:
        return 2 if size <= 28 else 0
    return 4


class Conv(nn.Module):
    """A k x k convolution with ``nn.Conv``'s parameters (``kernel`` [k, k, C, F], ``bias``), initialisation and
    result for explicit ``padding``, computed the fastest way measured on a CPU (``benchmarks/conv_layers.py``,
    ``benchmarks/RESULTS.md``):

    * 3x3 stride-1 layers (``winograd_tile``): ``winograd_conv3x3``. Its transformed kernel U = G g G^T is
      read from the ``winograd`` collection when the caller has computed it once (``winograd_kernels``;
      ``Backbone`` does), else computed from the kernel on every call (~1% of ResNet50, within noise);
    * bfloat16, other layers with outputs of at most ``shifted_max_size`` px (the strided 3x3 layers):
      ``shifted_conv``, bf16 products with float32 results, which XLA:CPU runs on the CPU's bf16 dot
      instructions and its bf16 convolutions do not (alone: 7x7 2.0x, 14x14 1.7x, 28x28 1.2x; the stem 0.03x);
    * else ``lax.conv_general_dilated``, and always off the CPU or with ``kernels="xla"`` (``cpu_kernels``).
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
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features),
                            self.param_dtype)
        x = x.astype(self.dtype)
        out_size = max((n + sum(p) - k) // s + 1
                       for n, p, k, s in zip(x.shape[1:3], self.padding, self.kernel_size, self.strides))
        tile = winograd_tile(self.dtype, self.kernel_size, self.strides, self.padding, out_size, self.kernels)
        if tile:
            if self.has_variable("winograd", "kernel"):
                u = self.get_variable("winograd", "kernel")
            else:
                u = winograd_kernel(kernel, tile, self.dtype)
                if self.is_mutable_collection("winograd") and not self.is_initializing():
                    self.put_variable("winograd", "kernel", u)
            y = winograd_conv3x3(x, u, tile).astype(self.dtype)
        elif (jnp.dtype(self.dtype) == jnp.bfloat16 and out_size <= self.shifted_max_size
              and cpu_kernels(self.kernels)):
            y = shifted_conv(jnp.pad(x, ((0, 0), *self.padding, (0, 0))), kernel.astype(self.dtype),
                             self.strides).astype(self.dtype)
        else:
            y = xla_conv(x, kernel.astype(self.dtype), self.strides, self.padding)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype).astype(self.dtype)
        return y


def winograd_kernels(model: nn.Module, variables, image_size: int = 224):
    """``{"winograd": ...}``: every Winograd layer's U = G g G^T, for ``model.apply({**variables, **this}, x)``
    on images of ``image_size``, so that inference does not transform the kernels on every call. Only the
    kernel transforms run: XLA drops the rest of the forward pass whose output this discards."""
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.jit(lambda v: model.apply(v, x, mutable=["winograd"])[1])(variables)


def conv_layer(features, kernel_size, strides=(1, 1), *, padding=((0, 0), (0, 0)), name=None, **kwargs):
    """``Conv``, or ``PointwiseConv`` for 1x1 kernels (identical parameters, faster on CPU)."""
    if tuple(kernel_size) == (1, 1):
        kwargs.pop("padding", None)
        return PointwiseConv(features, tuple(strides), name=name, **kwargs)
    return Conv(features, tuple(kernel_size), tuple(strides), padding, name=name, **kwargs)


def max_pool_3x3_s2(x, kernels: str = "auto"):
    """``nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))``; on the CPU in bfloat16 as the maximum of
    strided slices, rows then columns (XLA:CPU's bfloat16 reduce-window is 5x slower than its float32 one)."""
    if x.dtype != jnp.bfloat16 or not cpu_kernels(kernels):
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
    kernels: str = "auto"     # "auto": the CPU rewrites on the CPU only; "xla" / "cpu": never / always (KERNELS)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown ResNet variant {self.variant!r}; expected one of {VARIANTS}")
        conv = functools.partial(
            conv_layer, use_bias=self.variant == "v1", kernel_init=he_normal, dtype=self.dtype,
            param_dtype=jnp.float32, kernels=self.kernels)
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
            epsilon=BN_EPSILON[self.variant], dtype=self.dtype, param_dtype=jnp.float32)

        x = jnp.asarray(x, self.dtype)
        x = conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = max_pool_3x3_s2(x, self.kernels)
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

"""Convolutions and max pooling in the forms XLA:CPU runs fastest, with ``nn.Conv`` / ``nn.max_pool``'s
parameters and results.

``conv`` and ``max_pool`` plug into ``popjax.models.ResNet`` (``ResNet(conv=cpu_conv.conv,
max_pool=cpu_conv.max_pool)``; ``popjax.Backbone`` does so when JAX runs on the CPU):

* 1x1 layers: ``PointwiseConv``, a matrix product over channels (a stride is a subsampling first);
* 3x3 stride-1 layers (``winograd_tile``): Winograd F(m x m, 3x3), ``winograd_conv3x3``; the transformed
  kernels can be precomputed once for inference (``winograd_kernels``, a ``winograd`` variable collection);
* bfloat16 layers with small outputs (the strided 3x3 layers): ``shifted_conv``, k^2 bf16 matrix products with
  float32 results, which run on the CPU's bf16 dot instructions where XLA:CPU's bf16 convolutions do not;
* other layers: XLA's own convolution;
* bfloat16 3x3 stride-2 max pool: the maximum of strided slices (XLA:CPU's bf16 reduce-window is slow).

Speeds of each form are measured by ``benchmarks/conv_layers.py`` (``benchmarks/RESULTS.md``).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from popjax.models.resnet import precision


class PointwiseConv(nn.Module):
    """A 1x1 convolution computed as a matrix product over channels.

    Same parameters (``kernel`` [1, 1, C, F], ``bias``), initialisation and result as ``nn.Conv`` with a
    1x1 kernel; XLA's CPU backend runs it faster as a dot than as a convolution. A stride s is a subsampling
    of the input first.
    """

    features: int
    strides: tuple = (1, 1)
    use_bias: bool = False
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype)
        x = x.astype(self.dtype)
        # float32 accumulation whatever dtype is: XLA:CPU runs a bfloat16 dot with a float32 result on the
        # CPU's bf16 dot-product instructions, and a bfloat16-result dot in float32.
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
    product, vec(U) = (G kron G) vec(g) over the C x F kernels (faster than the two-sided product,
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
    # Each transform acts on one axis of a stacked array at a time (few HLO ops: faster to compile
    # than per-tile-element expressions, same speed).
    r = jnp.stack(_combine(bt, [xp[:, i:i + tile * (th - 1) + 1:tile] for i in range(n)]))          # B^T d
    v = jnp.stack(_combine(bt, [r[:, :, :, j:j + tile * (tw - 1) + 1:tile] for j in range(n)]), 1)  # (B^T d) B
    m = jnp.einsum("nbhwc,ncf->nbhwf", v.reshape(n * n, b, th, tw, -1).astype(u.dtype), u,
                   preferred_element_type=jnp.float32, precision=precision(u.dtype)).reshape(n, n, b, th, tw, -1)
    rows = jnp.stack(_combine(at, list(m)), axis=3)                 # A^T M: [n, B, th, tile, tw, F]
    y = jnp.stack(_combine(at, list(rows)), axis=4)                 # (A^T M) A: [B, th, tile, tw, tile, F]
    return y.reshape(b, th * tile, tw * tile, -1)[:, :h, :w]


def xla_conv(x, kernel, strides, padding):
    """XLA's own convolution (cuDNN on NVIDIA GPUs), float32 results in float32 precision."""
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=precision(x.dtype))


def winograd_tile(dtype, kernel_size, strides, padding, size) -> int:
    """The Winograd tile ``Conv`` uses for a layer (0: none), chosen from single layers and the whole ResNet50
    (``benchmarks/conv_layers.py``): 3x3 stride-1 pad-1 layers only; float32: tile 4 (faster in the network
    than tile 2 anywhere); bfloat16: tile 2 at 28 px and below (tile 4 is too inexact in bf16, and at 56 px
    tile 2 is no faster in the network than XLA's convolution)."""
    if (tuple(kernel_size), tuple(strides), tuple(map(tuple, padding))) != ((3, 3), (1, 1), ((1, 1), (1, 1))):
        return 0
    if jnp.dtype(dtype) == jnp.bfloat16:
        return 2 if size <= 28 else 0
    return 4


class Conv(nn.Module):
    """A k x k convolution with ``nn.Conv``'s parameters (``kernel`` [k, k, C, F], ``bias``), initialisation and
    result for explicit ``padding``, computed the fastest way measured on a CPU (``benchmarks/conv_layers.py``):

    * 3x3 stride-1 layers (``winograd_tile``): ``winograd_conv3x3``. Its transformed kernel U = G g G^T is
      read from the ``winograd`` collection when the caller has computed it once (``winograd_kernels``;
      ``Backbone`` does), else computed from the kernel on every call (a small part of the layer's work);
    * bfloat16, other layers with outputs of at most ``shifted_max_size`` px (the strided 3x3 layers):
      ``shifted_conv``, bf16 products with float32 results, which XLA:CPU runs on the CPU's bf16 dot
      instructions and its bf16 convolutions do not (faster at 28 px and below, far slower for the stem);
    * else ``lax.conv_general_dilated``.
    """

    features: int
    kernel_size: tuple
    strides: tuple = (1, 1)
    padding: Any = ((0, 0), (0, 0))
    use_bias: bool = False
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    shifted_max_size: int = 28

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features),
                            self.param_dtype)
        x = x.astype(self.dtype)
        out_size = max((n + sum(p) - k) // s + 1
                       for n, p, k, s in zip(x.shape[1:3], self.padding, self.kernel_size, self.strides))
        tile = winograd_tile(self.dtype, self.kernel_size, self.strides, self.padding, out_size)
        if tile:
            if self.has_variable("winograd", "kernel"):
                u = self.get_variable("winograd", "kernel")
            else:
                u = winograd_kernel(kernel, tile, self.dtype)
                if self.is_mutable_collection("winograd") and not self.is_initializing():
                    self.put_variable("winograd", "kernel", u)
            y = winograd_conv3x3(x, u, tile).astype(self.dtype)
        elif jnp.dtype(self.dtype) == jnp.bfloat16 and out_size <= self.shifted_max_size:
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
    return _winograd_program(model, image_size)(variables)


@functools.lru_cache(maxsize=None)
def _winograd_program(model: nn.Module, image_size: int):
    """``winograd_kernels``' compiled program, one per model and image size."""
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.jit(lambda v: model.apply(v, x, mutable=["winograd"])[1])


def conv(features, kernel_size, strides=(1, 1), padding=((0, 0), (0, 0)), *, precision=None, name=None, **kwargs):
    """What ``nn.Conv(features, kernel_size, strides, padding, ...)`` is in ``ResNet``: ``PointwiseConv`` for
    1x1 kernels, else ``Conv`` (identical parameters and results, faster on a CPU). ``precision`` is
    accepted for ``nn.Conv``'s signature; these layers take theirs from ``dtype``."""
    if tuple(kernel_size) == (1, 1) and tuple(map(tuple, padding)) == ((0, 0), (0, 0)):
        return PointwiseConv(features, tuple(strides), name=name, **kwargs)
    return Conv(features, tuple(kernel_size), tuple(strides), padding, name=name, **kwargs)


def max_pool(x, window_shape, strides=None, padding="VALID"):
    """``nn.max_pool``; its 3x3 stride-2 pad-1 form in bfloat16 as the maximum of strided slices, rows then
    columns (XLA:CPU's bfloat16 reduce-window is several times slower than its float32 one)."""
    if x.dtype != jnp.bfloat16 or (tuple(window_shape), tuple(strides or ()), padding) != (
            (3, 3), (2, 2), ((1, 1), (1, 1))):
        return nn.max_pool(x, window_shape, strides, padding=padding)
    h, w = (x.shape[1] + 1) // 2, (x.shape[2] + 1) // 2
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    x = functools.reduce(jnp.maximum, [x[:, i:i + 2 * h - 1:2] for i in range(3)])
    return functools.reduce(jnp.maximum, [x[:, :, j:j + 2 * w - 1:2] for j in range(3)])

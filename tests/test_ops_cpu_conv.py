"""popjax.ops.cpu_conv, the CPU forms of ResNet's layers, against XLA's convolutions and flax's layers."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from popjax.models import ResNet
from popjax.ops import cpu_conv
from popjax.ops.cpu_conv import (WINOGRAD, Conv, PointwiseConv, shifted_conv, winograd_conv3x3, winograd_kernel,
                                 winograd_kernels)


def _bf16(a):
    return np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32))


@pytest.mark.parametrize("k,stride,pad,size", [(3, 1, 1, 9), (3, 2, 1, 10), (7, 2, 3, 15)])
def test_shifted_conv_is_a_convolution(k, stride, pad, size):
    rng = np.random.default_rng(k + stride)
    x = rng.normal(size=(2, size, size, 5)).astype(np.float32)
    w = rng.normal(size=(k, k, 5, 6)).astype(np.float32)
    padding = ((pad, pad), (pad, pad))
    ref = jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = shifted_conv(jnp.pad(x, ((0, 0), *padding, (0, 0))), w, (stride, stride))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_kernel_is_g_kernel_g_transposed(tile):
    k = np.random.default_rng(tile).normal(size=(3, 3, 5, 7))
    g = np.asarray(WINOGRAD[tile]["G"])
    ref = np.stack([[g @ k[:, :, c, f] @ g.T for f in range(7)] for c in range(5)]).transpose(2, 3, 0, 1)
    u = np.asarray(winograd_kernel(k.astype(np.float32), tile))
    assert u.shape == ((tile + 2) ** 2, 5, 7)
    np.testing.assert_allclose(u.reshape(ref.shape), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("h,w", [(2, 2), (7, 7), (8, 10), (16, 16)])
def test_winograd_conv3x3_is_a_convolution(tile, h, w):
    rng = np.random.default_rng(h * w + tile)
    x = rng.normal(size=(2, h, w, 5)).astype(np.float32)
    k = rng.normal(size=(3, 3, 5, 7)).astype(np.float32)
    ref = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       precision="highest")
    out = winograd_conv3x3(x, winograd_kernel(k, tile), tile)
    assert out.shape == ref.shape
    # float32 rounding of the transforms: ~1e-7 (tile 2) / ~1e-6 (tile 4) of the largest output here
    assert np.abs(out - ref).max() < {2: 1e-6, 4: 1e-5}[tile] * np.abs(ref).max()


@pytest.mark.parametrize("size", [14, 15, 16, 56])   # every float32 3x3 stride-1 layer is Winograd, tile 4
def test_float32_conv_is_nn_conv(size):
    x = np.random.default_rng(size).normal(size=(2, size, size, 8)).astype(np.float32)
    conv = Conv(4, (3, 3), (1, 1), ((1, 1), (1, 1)), use_bias=True)
    ref = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)))
    v = ref.init(jax.random.key(0), x)
    v = jax.tree.map(lambda a: a + 0.1, v)   # a nonzero bias
    out, expected = np.asarray(conv.apply(v, x)), np.asarray(ref.apply(v, x))
    assert np.abs(out - expected).max() < 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_off_the_cpu_every_conv_is_xlas(monkeypatch, dtype):
    """A backbone off the CPU (or with ``kernels="xla"``) runs flax's layers: the 3x3 layers (stride 1 and 2)
    lower to one convolution each and no Winograd kernels are prepared; with the CPU layers a stride-1 layer
    lowers to matrix products (Winograd)."""
    from popjax import backbone

    x = jnp.zeros((1, 16, 16, 8), jnp.float32)

    def primitives(kernels, strides):
        model = backbone.resnet50(kernels, dtype=dtype)
        conv = functools.partial(model.conv, 8, (3, 3), strides, ((1, 1), (1, 1)), dtype=dtype)()
        v = conv.init(jax.random.key(0), x)
        return {e.primitive.name for e in jax.make_jaxpr(conv.apply)(v, x).jaxpr.eqns}

    assert "conv_general_dilated" not in primitives("auto", (1, 1))
    monkeypatch.setattr(backbone.jax, "default_backend", lambda: "gpu")
    for kernels in ("auto", "xla"):
        for s in ((1, 1), (2, 2)):
            assert "conv_general_dilated" in primitives(kernels, s) and "dot_general" not in primitives(kernels, s)
    assert backbone.resnet50("auto").conv is nn.Conv and backbone.resnet50("cpu").conv is cpu_conv.conv
    with pytest.raises(ValueError, match="kernels = 'gpu'"):
        backbone.resnet50("gpu")


def test_cpu_layers_keep_resnet_parameters_and_outputs():
    """ResNet with ``cpu_conv``'s layers has flax's parameter tree and initial values, and its features equal
    the flax layers' (float32, every layer kind: stem, pointwise, Winograd, strided 3x3, max pool)."""
    plain = ResNet(stage_sizes=(1, 1), width=4)
    cpu = plain.clone(conv=cpu_conv.conv, max_pool=cpu_conv.max_pool)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    v = plain.init(jax.random.key(0), x)
    v_cpu = cpu.init(jax.random.key(0), x)
    assert jax.tree.structure(v) == jax.tree.structure(v_cpu)
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v_cpu)):
        np.testing.assert_array_equal(a, b)
    ref, out = plain.apply(v, x)["features"], cpu.apply(v, x)["features"]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_winograd_kernels_are_computed_once_and_used():
    """``winograd_kernels`` returns U = G g G^T of each Winograd layer (float32: tile 4) and only for those;
    applying the model with them gives what it computes without them, and a changed U is used."""
    model = ResNet(stage_sizes=(1, 1), width=4, conv=cpu_conv.conv)
    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    v = model.init(jax.random.key(0), x)
    assert "winograd" not in v
    pre = winograd_kernels(model, v)
    assert set(pre["winograd"]) == {"conv2_block1"}   # conv3_block1's 3x3 has stride 2
    u = pre["winograd"]["conv2_block1"]["conv2"]["kernel"]
    np.testing.assert_allclose(u, winograd_kernel(v["params"]["conv2_block1"]["conv2"]["kernel"], 4), rtol=1e-6)
    out = model.apply(v, x)["features"]
    np.testing.assert_array_equal(model.apply({**v, **pre}, x)["features"], out)
    zeroed = jax.tree.map(jnp.zeros_like, pre)
    assert not np.allclose(model.apply({**v, **zeroed}, x)["features"], out)


@pytest.mark.parametrize("size,stride", [(8, 1), (8, 2), (40, 1)])   # Winograd, shifted products, XLA's conv
def test_bf16_conv_is_the_float32_conv_of_bf16_inputs(size, stride):
    """Each bf16 path takes nn.Conv's parameters and equals the float32 convolution of the same bf16 values up
    to one bf16 rounding of the output (relative 2^-8); Winograd also rounds its transformed input and kernel
    to bf16 (each a sum of a few terms), within 2^-7 of the largest output."""
    rng = np.random.default_rng(size + stride)
    x = rng.normal(size=(2, size, size, 64)).astype(np.float32)
    conv = Conv(32, (3, 3), (stride, stride), ((1, 1), (1, 1)), use_bias=True, dtype=jnp.bfloat16)
    v = conv.init(jax.random.key(0), x)
    flax_v = jax.tree.map(np.asarray, v)
    assert jax.tree.structure(flax_v) == jax.tree.structure(
        nn.Conv(32, (3, 3), padding=((1, 1), (1, 1))).init(jax.random.key(0), x))
    out = np.asarray(conv.apply(v, x).astype(jnp.float32))
    p = flax_v["params"]
    ref = np.asarray(jax.lax.conv_general_dilated(_bf16(x), _bf16(p["kernel"]), (stride, stride), ((1, 1), (1, 1)),
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC")) + _bf16(p["bias"]))
    if stride == 1 and size <= 28:
        assert np.abs(out - ref).max() < 2 ** -7 * np.abs(ref).max()
    else:
        np.testing.assert_allclose(out, ref, rtol=2 ** -8, atol=1e-2)


def test_bf16_pointwise_conv_accumulates_in_float32():
    """2048 products per output: a bf16 running sum would drift by several bf16 steps; float32 accumulation
    leaves only the output's own rounding to nearest (at most 2^-8 relative)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(1, 2, 2, 2048)).astype(np.float32)
    conv = PointwiseConv(8, dtype=jnp.bfloat16, kernel_init=nn.initializers.uniform(1.0))
    v = conv.init(jax.random.key(0), x)
    out = np.asarray(conv.apply(v, x).astype(jnp.float32), np.float64)
    ref = _bf16(x).astype(np.float64) @ _bf16(v["params"]["kernel"][0, 0]).astype(np.float64)
    assert np.max(np.abs(out - ref) / np.abs(ref)) <= 2 ** -8


@pytest.mark.parametrize("size", [8, 9])
def test_bf16_max_pool_equals_flax_max_pool(size):
    x = jnp.asarray(np.random.default_rng(size).normal(size=(2, size, size, 3)) - 3.0, jnp.bfloat16)  # negative: -inf padding
    ref = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_array_equal(cpu_conv.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))), ref)

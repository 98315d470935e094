"""Where does XLA:CPU spend ResNet50's time, and which form of each convolution is fastest?

The repeated convolution shapes (stride 1) and the stem, each alone, ms and GFLOP/s, and rewrites of the slow ones
checked against ``lax.conv_general_dilated``.

One JAX device (XLA's own intra-op threads), ``--dtype`` (fp32 or bf16), NHWC, batch ``--batch``; median of
``--calls`` calls after a warm-up; freed memory retained as the ``popjax`` command does (``--system-malloc``: not).
Rows, besides XLA's own convolution:

* ``winograd tile 2 / 4``: what popjax's ``Conv`` runs for 3x3 stride-1 layers (``cpu_conv.winograd_tile``: fp32
  tile 4, bf16 tile 2 at 28 px and below), Winograd F(2x2, 3x3) / F(4x4, 3x3) with
  the kernel transform done once outside the timed call, as ``Backbone`` does; counted at the direct
  convolution's FLOPs;
* ``shifted`` (bf16): ``cpu_conv.shifted_conv``, k^2 shifted bf16 dots with float32 results (popjax's strided
  bf16 3x3 layers);
* ``dot``: the 1x1 convolution as a dot (``PointwiseConv``; bf16: with a float32 result);
* what one would try to route around a weak kernel: ``im2col`` (the 9 shifted copies concatenated on
  channels, one dot with K = 9C), ``rows3`` (3 horizontal shifts concatenated, 3 dots), ``shift_out`` (one dot
  to all 9 taps' outputs, then 9 shifted adds), ``s2d stem`` (the 7x7 stride-2 stem as a 4x4 stride-1 conv on
  the 2x2 space-to-depth input, the MLPerf TPU trick).

    python benchmarks/conv_layers.py [--dtype fp32|bf16] [--batch 32] [--calls 5] [--markdown]
                                     [--out benchmarks/out/conv_layers[_bf16].json]
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from _env import environment, markdown_table, median, per_call, write_result

DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w, stride=1, padding="SAME"):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)


def pointwise(x, w):
    return jnp.einsum("bhwc,cd->bhwd", x, w[0, 0])


def _padded(x):
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def im2col(x, w):
    h, wd, c = x.shape[1:]
    xp = _padded(x)
    cols = jnp.concatenate([xp[:, dy:dy + h, dx:dx + wd] for dy in range(3) for dx in range(3)], -1)
    return jnp.einsum("bhwc,cd->bhwd", cols, w.reshape(9 * c, -1))


def rows3(x, w):
    h, wd, c = x.shape[1:]
    cols = jnp.concatenate([_padded(x)[:, :, dx:dx + wd] for dx in range(3)], -1)
    return sum(jnp.einsum("bhwc,cd->bhwd", cols[:, dy:dy + h], w[dy].reshape(3 * c, -1)) for dy in range(3))


def shift_out(x, w):
    b, h, wd, c = x.shape
    co = w.shape[-1]
    z = jnp.einsum("bhwc,cd->bhwd", x, w.transpose(2, 0, 1, 3).reshape(c, 9 * co)).reshape(b, h, wd, 3, 3, co)
    zp = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
    return sum(zp[:, dy:dy + h, dx:dx + wd, dy, dx] for dy in range(3) for dx in range(3))


def stem(x, w):
    return conv(x, w, 2, ((3, 3), (3, 3)))


def s2d_stem(x, w):
    b, h, wd, c = x.shape
    xp = jnp.pad(x, ((0, 0), (3, 5), (3, 5), (0, 0)))               # 7x7 pad 3, then even: 232
    hh = xp.shape[1] // 2
    xs = xp.reshape(b, hh, 2, hh, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hh, hh, 4 * c)
    ws = jnp.pad(w, ((0, 1), (0, 1), (0, 0), (0, 0))).reshape(4, 2, 4, 2, c, -1)
    ws = ws.transpose(0, 2, 1, 3, 4, 5).reshape(4, 4, 4 * c, -1)
    return conv(xs, ws, 1, "VALID")[:, :h // 2, :wd // 2]


def shifted(x, w, stride=1):
    """popjax's bf16 k x k convolution (``Conv``): k^2 shifted dots with float32 results."""
    from popjax.ops.cpu_conv import shifted_conv

    p = w.shape[0] // 2
    return shifted_conv(jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))), w, (stride, stride)).astype(x.dtype)


def winograd(tile):
    """popjax's 3x3 stride-1 convolution (``Conv``): Winograd F(tile x tile, 3x3) with its transformed kernel U
    computed once outside the timed call, as ``Backbone`` does (``winograd_kernels``)."""
    from popjax.ops.cpu_conv import winograd_conv3x3, winograd_kernel

    def prepare(w):
        return winograd_kernel(w, tile, w.dtype)

    def fn(x, u):
        return winograd_conv3x3(x, u, tile).astype(x.dtype)

    return fn, prepare


def pointwise_f32_result(x, w):
    return jnp.einsum("bhwc,cd->bhwd", x, w[0, 0], preferred_element_type=jnp.float32).astype(x.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--out", default=None, help="default benchmarks/out/conv_layers[_bf16].json")
    parser.add_argument("--system-malloc", action="store_true",
                        help="glibc's defaults instead of popjax's retained memory (runtime.retain_freed_memory)")
    parser.add_argument("--markdown", action="store_true", help="also print the table as RESULTS.md holds it")
    args = parser.parse_args()
    bf16 = args.dtype == "bf16"
    dtype = jnp.bfloat16 if bf16 else jnp.float32
    args.out = args.out or f"benchmarks/out/conv_layers{'_bf16' if bf16 else ''}.json"
    if not args.system_malloc:
        from popjax import runtime

        runtime.retain_freed_memory()   # as the popjax command does
    rng = np.random.default_rng(0)
    B = args.batch
    # (name, input HxW, Cin, kernel k, Cout, stride, blocks of ResNet50 using it)
    layers = [("stem 7x7/2", 224, 3, 7, 64, 2, 1)]
    for hw, w, blocks in ((56, 64, 3), (28, 128, 4), (14, 256, 6), (7, 512, 3)):
        layers += [(f"3x3 {hw}x{hw}x{w}", hw, w, 3, w, 1, blocks),
                   (f"1x1 {4 * w}->{w} @{hw}", hw, 4 * w, 1, w, 1, blocks),
                   (f"1x1 {w}->{4 * w} @{hw}", hw, w, 1, 4 * w, 1, blocks)]
    rewrites = {"3x3": {"winograd tile 2": winograd(2), "winograd tile 4": winograd(4), "im2col": im2col,
                        "rows3": rows3, "shift_out": shift_out}, "stem": {"s2d stem": s2d_stem}}
    if bf16:
        rewrites = {"3x3": {"winograd tile 2": winograd(2), "shifted": shifted},
                    "stem": {"shifted": lambda x, w: shifted(x, w, 2)}}
    rows = []
    for name, hw, cin, k, cout, stride, blocks in layers:
        x = jnp.asarray(rng.standard_normal((B, hw, hw, cin)), dtype)
        w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), dtype)
        base = jax.jit(stem if k == 7 else pointwise if k == 1 else conv)
        ref = jax.jit(stem if k == 7 else conv)(x.astype(jnp.float32), w.astype(jnp.float32))
        flop = 2 * B * ref.shape[1] * ref.shape[2] * k * k * cin * cout
        # impl -> (jitted fn, its weight argument): Winograd takes U, transformed once outside the timing
        fns = {"XLA": (base, w)}
        for n, f in rewrites.get(name.split()[0], {}).items():
            fns[n] = (jax.jit(f[0]), f[1](w)) if isinstance(f, tuple) else (jax.jit(f), w)
        if k == 1:
            fns = {"XLA": (jax.jit(conv), w),
                   "dot (popjax PointwiseConv)": (jax.jit(pointwise_f32_result if bf16 else pointwise), w)}
        for impl, (fn, arg) in fns.items():
            out = fn(x, arg).astype(jnp.float32)
            err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
            s = median(per_call(lambda fn=fn, arg=arg: jax.block_until_ready(fn(x, arg)), args.calls))
            rows.append({"layer": name, "impl": impl, "blocks": blocks, "ms": round(1e3 * s, 1),
                         "gflop_per_s": round(flop / s / 1e9, 1), "rel_err": float(f"{err:.1e}")})
            print(f"{name:22s} {impl:28s} {1e3 * s:8.1f} ms {flop / s / 1e9:6.0f} GFLOP/s  "
                  f"x{blocks} blocks  err {err:.0e}", flush=True)
    if args.markdown:
        impls = list(dict.fromkeys(r["impl"] for r in rows))
        layers_ = list(dict.fromkeys((r["layer"], r["blocks"]) for r in rows))
        ms = {(r["layer"], r["impl"]): r["ms"] for r in rows}
        print(f"\n{args.dtype}, batch {B}, ms per call")
        print(markdown_table(["layer (x blocks)"] + impls,
                             [[f"{name} (x{blocks})"] + [ms.get((name, i)) for i in impls] for name, blocks in layers_]))
    doc = {"what": f"single conv layers of ResNet50, {args.dtype} NHWC, batch {B}, one JAX device",
           "environment": environment(), "rows": rows}
    print(f"-> {write_result(args.out, doc)}")


if __name__ == "__main__":
    main()

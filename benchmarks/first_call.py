"""What does a process's first ``Backbone.features`` call cost, step by step, with a cold compilation cache?

What ``popjax extract`` / ``predict`` / ``explain`` pay once per process before the backbone runs at its steady
rate (``report.json``'s ``first_call_seconds`` is this plus decoding the first videos):

* the Winograd kernel transforms (``Backbone.inference_variables``), and U = G g G^T alone for every Winograd
  layer as popjax computes it (one matrix product per layer, ``cpu_conv.winograd_kernel``) and as the two-sided
  product G g G^T (the form it replaced);
* the forward pass: trace, lowering, XLA compilation, the first run, and the steady run (median of ``--calls``).

A fresh, empty ``POPJAX_CACHE_DIR`` unless ``--warm-cache`` (then the persistent cache of earlier runs is used);
freed memory retained and one CPU device per core, as the ``popjax`` command runs.

    python benchmarks/first_call.py [--dtype fp32|bf16] [--batch-size 32] [--calls 3] [--warm-cache] [--markdown]
                                    [--out benchmarks/out/first_call_<dtype>.json]
"""
from __future__ import annotations

import argparse
import os
import tempfile

from _env import environment, markdown_table, median, per_call, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch-size", type=int, default=32, help="frames per call, as extract's (-> 36)")
    parser.add_argument("--calls", type=int, default=3, help="steady calls after the first (median)")
    parser.add_argument("--warm-cache", action="store_true", help="use the persistent compilation cache")
    parser.add_argument("--markdown", action="store_true", help="also print the table as RESULTS.md holds it")
    parser.add_argument("--out", default=None, help="default benchmarks/out/first_call_<dtype>.json")
    args = parser.parse_args()
    if not args.warm_cache:
        os.environ["POPJAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="popjax-first-call-cache-")
    from popjax import runtime

    runtime.configure(retain_memory=True)   # as the popjax command; before JAX starts
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax.traverse_util import flatten_dict

    from popjax import parallel
    from popjax.backbone import Backbone
    from popjax.extract import frames_per_call
    from popjax.ops.cpu_conv import WINOGRAD, winograd_kernel

    env = environment()
    dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[args.dtype]
    backbone = Backbone.random(0, batch_size=frames_per_call(args.batch_size, 18), dtype=dtype)
    frames = np.random.default_rng(0).integers(0, 256, (backbone.batch_size, 224, 224, 3), np.uint8)
    x = jax.device_put(frames, parallel.batch_sharding(backbone.mesh))
    steps = {}

    def step(name, fn, calls: int = 1):
        """Times ``calls`` calls of ``fn`` (blocked on), records the median as step ``name``, returns the last result."""
        results = []
        steps[name] = median(per_call(lambda: jax.block_until_ready(fn()), calls, warmup=0, outputs=results))
        return results[-1]

    variables = step("kernel transforms (inference_variables)", lambda: backbone.inference_variables)

    # U alone for the same layers (the tile from U's shape), once as popjax computes it, once two-sided.
    params, transformed = flatten_dict(variables["params"]), flatten_dict(variables["winograd"])
    kernels = [params[path] for path in transformed]   # the same path: .../convN/kernel
    tiles = [int(round(u.shape[0] ** 0.5)) - 2 for u in transformed.values()]

    def two_sided(kernel, tile):
        g = jnp.asarray(WINOGRAD[tile]["G"], jnp.float32)
        u = jnp.einsum("ki,ijcf,lj->klcf", g, kernel.astype(jnp.float32), g)
        return u.reshape(-1, *kernel.shape[2:]).astype(dtype)

    for name, fn in [("U alone, one product per layer (popjax)", lambda k, t: winograd_kernel(k, t, dtype)),
                     ("U alone, two-sided G g G^T (the form it replaced)", two_sided)]:
        f = jax.jit(lambda ks, fn=fn: [fn(k, t) for k, t in zip(ks, tiles)])
        compiled = step(f"{name}: compile", lambda f=f: f.lower(kernels).compile())
        step(f"{name}: run", lambda c=compiled: c(kernels), calls=3)

    traced = step("forward: trace", lambda: backbone._features.trace(variables, x))
    lowered = step("forward: lower", traced.lower)
    compiled = step("forward: compile (or load)", lowered.compile)
    step("forward: first run", lambda: compiled(variables, x))
    step("forward: steady run (median)", lambda: compiled(variables, x), calls=args.calls)

    print(f"first Backbone.features call, {args.dtype}, {backbone.batch_size} frames, {jax.device_count()} "
          f"devices, {'warm' if args.warm_cache else 'cold'} compilation cache, {len(kernels)} Winograd layers")
    for name, seconds in steps.items():
        print(f"  {name:48s} {seconds:7.3f} s")
    doc = {"what": "one-time cost of the first Backbone.features call", "dtype": args.dtype,
           "frames_per_call": backbone.batch_size, "warm_cache": args.warm_cache, "winograd_layers": len(kernels),
           "seconds": {k: round(v, 4) for k, v in steps.items()}, "environment": env}
    if args.markdown:
        print("\n" + markdown_table(["step", f"{args.dtype}{', warm cache' if args.warm_cache else ''} s"],
                                     [[k, round(v, 2)] for k, v in steps.items()]))
    print(f"-> {write_result(args.out or f'benchmarks/out/first_call_{args.dtype}.json', doc)}")


if __name__ == "__main__":
    main()

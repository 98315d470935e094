"""How fast is ``Backbone.features`` on calls smaller than its batch?

The default backbone (batch 32, padded to the smallest bucket that holds the call) vs the same call padded to the
whole batch (``buckets=()``) vs a backbone built for exactly that call size; frames/s, the median of all calls of
interleaved rounds, so a shared host's drift reaches all alike.

    python benchmarks/backbone_call_sizes.py [--sizes 1 4 16 18] [--rounds 5] [--calls 2] [--markdown]
                                             [--out benchmarks/out/backbone_call_sizes.json]
"""
from __future__ import annotations

import argparse

import numpy as np
from _env import environment, interleaved, markdown_table, median, standard_arguments, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 18])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--calls", type=int, default=2, help="timed calls per round and backbone")
    standard_arguments(parser, "backbone_call_sizes")
    args = parser.parse_args()
    from popjax import parallel, runtime

    runtime.retain_freed_memory()   # before threads start, as the popjax CLI does
    parallel.use_all_cpu_cores()    # before JAX starts, as the popjax CLI does
    import jax

    from popjax.backbone import Backbone

    env = environment()
    default = Backbone.random(0)
    variables = jax.device_get(default.variables)

    def built(**kw):
        return Backbone(variables, default.metadata, **kw)

    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        frames = rng.integers(0, 256, (n, 224, 224, 3), np.uint8)
        ways = {"default (buckets)": default, "padded to the batch": built(buckets=()), "built for n": built(batch_size=n)}
        for b in ways.values():
            b.features(frames)   # compile
        times = interleaved({k: (lambda b=b: b.features(frames)) for k, b in ways.items()}, args.rounds, args.calls)
        fps = {k: n / median(v) for k, v in times.items()}
        rows.append({"frames": n, "bucket": next(s for s in default.buckets if s >= n),
                     **{f"{k} frames/s": round(v, 2) for k, v in fps.items()},
                     "default / built for n": round(fps["default (buckets)"] / fps["built for n"], 3),
                     "padded / built for n": round(fps["padded to the batch"] / fps["built for n"], 3)})
    print(f"Backbone.features, fp32, {jax.device_count()} {jax.default_backend()} devices, default batch "
          f"{default.batch_size}, buckets {default.buckets}; frames/s (median of {args.rounds} interleaved rounds x {args.calls} calls)")
    print(f"{'frames':>6s} {'bucket':>6s} {'default':>9s} {'padded':>9s} {'built n':>9s} {'def/built':>9s} {'pad/built':>9s}")
    for r in rows:
        print(f"{r['frames']:6d} {r['bucket']:6d} {r['default (buckets) frames/s']:9.2f} "
              f"{r['padded to the batch frames/s']:9.2f} {r['built for n frames/s']:9.2f} "
              f"{r['default / built for n']:9.3f} {r['padded / built for n']:9.3f}")
    if args.markdown:
        print("\n" + markdown_table(
            ["frames", "bucket", "default", f"padded to {default.batch_size}", "built for n", "default / built",
             "padded / built"],
            [[r["frames"], r["bucket"], r["default (buckets) frames/s"], r["padded to the batch frames/s"],
              r["built for n frames/s"], r["default / built for n"], r["padded / built for n"]] for r in rows]))
    doc = {"what": "Backbone.features on small calls: bucketed padding vs whole-batch padding vs exact size",
           "environment": env, "batch_size": default.batch_size, "buckets": default.buckets, "rows": rows}
    print(f"-> {write_result(args.out, doc)}")


if __name__ == "__main__":
    main()

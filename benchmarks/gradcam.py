"""How long does a Grad-CAM explanation of one 18-frame video take, and how should its inputs be placed?

``popjax.explain.gradcam.make_explainer`` with a random ``Backbone`` (ResNet50) and a multimodal
``PopularityModel`` (default sizes, 1000-word vocabulary), ms per 18-frame video, batches of 1 (and 4 in full runs)
after a first call, in interleaved rounds; the Grad-CAM explainer and the forward-only one (``gradients=False``),
with three placements of the inputs: as ``popjax explain`` passes them (Backbone variables replicated over every
local device, the frames split over the devices), the variables replicated with host frames (the whole
computation then runs on every device), and on one device; full runs also time ``Backbone.features`` on the same
frames. ``benchmarks/gpu.py`` runs ``explainer_latency`` on an accelerator.

    python benchmarks/gradcam.py [--quick] [--batches 1 4] [--rounds 3] [--markdown]
                                 [--out benchmarks/out/gradcam.json]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from _env import environment, interleaved, markdown_table, median, per_call, standard_arguments, write_result
from train_steps import FEAT, N_FRAMES, T_WORDS, constants_collection


def explainer_latency(batches, rounds: int, quick: bool = False, explain_only: bool = False) -> dict:
    """ms per video of the Grad-CAM and forward-only explainers (and ``Backbone.features``) in every placement,
    for each number of videos per call in ``batches``; ``rounds`` timed interleaved rounds after the first call.
    ``quick``: the forward-only explainer in popjax explain's placement only, no ``Backbone.features`` row;
    ``explain_only``: only the placement ``popjax explain`` uses."""
    import jax
    import jax.numpy as jnp

    from popjax import Backbone, parallel
    from popjax.explain.gradcam import make_explainer
    from popjax.models import build_model

    t = time.perf_counter()
    bb = Backbone.random(0, batch_size=N_FRAMES)
    vocab, dim = 1000, 50
    model = build_model(dict(modality="multimodal", frame_pooling="attention", headline_pooling="attention"),
                        vocab_size=vocab, word_dim=dim)
    rng = np.random.default_rng(0)
    table = (0.3 * rng.standard_normal((vocab, dim))).astype(np.float32)
    init_batch = {"features": jnp.zeros((1, N_FRAMES, FEAT)), "tokens": jnp.ones((1, T_WORDS), jnp.int32),
                  "lengths": jnp.full((1,), T_WORDS, jnp.int32)}
    mvars = model.init(jax.random.key(1), init_batch)
    mvars = {"params": mvars["params"], "constants": constants_collection(model, init_batch, table)}
    setup_s = time.perf_counter() - t
    fns = {g: make_explainer(bb.model, bb.preprocess, model, gradients=g) for g in (True, False)}
    mesh = bb.mesh
    # How the backbone variables and the frames reach the jitted explainer:
    #   replicated:      the Backbone's variables replicated over its mesh of every local device, host frames ->
    #                    XLA runs the whole computation once per device;
    #   1 device:        the variables on one device;
    #   explain (split): as ``popjax explain`` passes them: variables replicated, frames [B, N, ...] split over the
    #                    devices (``parallel.split_sharding``).
    placements = {"replicated": (bb.variables, None),
                  "1 device": (jax.device_put(bb.variables, jax.devices()[0]), None)}
    if mesh.size > 1:
        placements["explain (split)"] = (bb.variables, "split")
    if explain_only:   # only the placement popjax explain uses
        placements = dict([list(placements.items())[-1]])
    out = {"setup_s": round(setup_s, 1), "backbone": bb.description, "local_devices": mesh.size,
           "placements": {"replicated": "Backbone variables replicated over all local devices, host frames: the "
                                        "whole computation runs on every device",
                          "1 device": "the variables on one device",
                          "explain (split)": "as popjax explain: variables replicated, the frames split over the "
                                             "devices (videos if they divide evenly, else the frames of each video; "
                                             "parallel.split_sharding)"},
           "rows": []}
    for b in batches:
        frames = rng.integers(0, 256, (b, N_FRAMES, 224, 224, 3), np.uint8)
        tokens = rng.integers(1, vocab, (b, T_WORDS)).astype(np.int32)
        lengths = np.full((b,), 12, np.int32)
        calls, info = {}, {}
        for name, (variables, frame_sharding) in placements.items():
            x = frames if frame_sharding is None else jax.device_put(
                frames, parallel.split_sharding(mesh, frames.shape, (0, 1)))
            for g in (True, False):
                if not g and quick and name != "explain (split)":
                    continue
                fn = fns[g]
                call = lambda fn=fn, v=variables, x=x, t=tokens, n=lengths: jax.block_until_ready(  # noqa: E731
                    fn(v, mvars, x, t, n))
                first = []
                first_s = per_call(call, 1, warmup=0, outputs=first)[0]
                info[(name, g)] = (first_s, len(first[0]["score"].sharding.device_set))
                calls[(name, g)] = call
        if not quick:
            flat = frames.reshape(-1, 224, 224, 3)
            bb.features(flat)
            calls[("features", None)] = lambda flat=flat: bb.features(flat)
        med = {k: median(v) for k, v in interleaved(calls, rounds).items()}
        for (name, g), s in med.items():
            if name == "features":
                continue
            what = "Grad-CAM" if g else "forward only (gradients=False)"
            first, ndev = info[(name, g)]
            out["rows"].append({"what": what, "placement": name, "videos": b, "devices_computing": ndev,
                                "first_call_s": round(first, 1), "ms_per_call": round(1e3 * s),
                                "ms_per_video": round(1e3 * s / b), "calls": rounds})
            print(f"  {what:31s} {name:15s} {b} video(s): {1e3 * s / b:7.0f} ms/video "
                  f"(first call {first:.1f} s)", flush=True)
        if ("features", None) in med:
            s = med[("features", None)]
            out["rows"].append({"what": "Backbone.features", "placement": f"batch split over {mesh.size} devices",
                                "videos": b, "devices_computing": mesh.size, "ms_per_call": round(1e3 * s),
                                "ms_per_video": round(1e3 * s / b), "calls": rounds})
            print(f"  {'Backbone.features':31s} {'split':12s} {b} video(s): {1e3 * s / b:7.0f} ms/video", flush=True)
    return out


def markdown(result: dict) -> str:
    """One row per explainer and placement, one column per videos per call (ms per video)."""
    rows = result["rows"]
    videos = list(dict.fromkeys(r["videos"] for r in rows))
    labels = list(dict.fromkeys((r["what"], r["placement"]) for r in rows))
    cells = {(r["what"], r["placement"], r["videos"]): r["ms_per_video"] for r in rows}
    return markdown_table(["ms per 18-frame video", "placement"] + [f"{v} video{'s' if v > 1 else ''} per call"
                                                                      for v in videos],
                          [[w, p] + [cells.get((w, p, v)) for v in videos] for w, p in labels])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="videos per call (default 1 4; quick 1)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds after the first call, every placement in turn (default 3; quick 2)")
    standard_arguments(parser, "gradcam", devices_like="the popjax command",
                       quick="1 video per call, 2 rounds, fewer rows")
    args = parser.parse_args()
    q = args.quick
    args.batches = args.batches or ([1] if q else [1, 4])
    args.rounds = args.rounds or (2 if q else 3)

    from popjax import parallel

    if args.devices == "all":
        parallel.use_all_cpu_cores()   # before JAX starts, as the popjax command does
    import jax

    doc = {"what": "Grad-CAM latency per 18-frame video, random ResNet50 + multimodal model", "quick": q,
           "environment": environment()}
    print(f"{jax.device_count()} JAX {jax.default_backend()} devices")
    t = time.perf_counter()
    doc["gradcam"] = explainer_latency(args.batches, args.rounds, quick=q)
    doc["seconds_total"] = round(time.perf_counter() - t, 1)
    print(f"\nGrad-CAM per 18-frame video, {doc['gradcam']['backbone']}")
    for k, v in doc["gradcam"]["placements"].items():
        print(f"  placement {k!r}: {v}")
    print(f"  {'':31s} {'placement':28s} {'videos':>6s} {'devices':>7s} {'ms/video':>9s}")
    for r in doc["gradcam"]["rows"]:
        print(f"  {r['what']:31s} {r['placement']:28s} {r['videos']:6d} {r['devices_computing']:7d} "
              f"{r['ms_per_video']:9.0f}")
    if args.markdown:
        print("\n" + markdown(doc["gradcam"]))
    print(f"\n{doc['seconds_total']} s -> {write_result(args.out, doc)}")


if __name__ == "__main__":
    main()

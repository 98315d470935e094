"""How fast does popjax compute ResNet50 features, against onnxruntime and PyTorch on the same weights and frames?

One torch ResNet50 with torchvision's parameter names (``popjax.testing.torch_resnet``, random weights, randomised
BatchNorm statistics) is the single source of weights:

* popjax:      its state dict saved as .safetensors -> ``popjax.weights.convert("torchvision", ...)`` ->
               ``Backbone`` (jit; the batch split over every local device, as ``popjax extract`` runs it after
               ``parallel.use_all_cpu_cores()``, and over one device for comparison); fp32 and bf16
               (``Backbone(..., dtype=jnp.bfloat16)``);
* PyTorch:     the same module, eager, channels_last, fp32 and ``torch.autocast("cpu", torch.bfloat16)``;
               ``torch.compile`` too with ``--torch-compile`` (skipped, and said so, if it fails);
* onnxruntime: the same module exported with ``torch.onnx.export(dynamo=False)``, opset 17, dynamic batch;
               CPU EP (intra-op threads = cores), CUDA EP when available. fp32 only: the CPU EP has no bf16
               convolution kernels.

Every implementation is timed from the SAME uint8 RGB frames [B, 224, 224, 3] (numpy, on the host) to float32
features [B, 2048] (numpy, on the host), preprocessing INCLUDED in the timed region and done inside each
framework's own graph: popjax inside its jit (``Backbone.features``), torch and onnxruntime by a wrapper
module (NHWC uint8 -> NCHW float, /255, ImageNet mean/std as ``popjax.weights.PREPROCESSING["torch"]``; exported
to ONNX with the network). The outputs are compared (max |a - b| / max |b| against torch fp32). Every
implementation is built and called once first; then the timed calls run in rounds that visit all of them in turn
(``--rounds`` x ``--calls``), so that a drift of a shared machine's speed during the run reaches them alike; a row
is the median of its calls.

Achieved FLOP/s: conv multiply-adds per 224 x 224 image are counted on the torch module (hooks), x2, and
images/s x FLOP/image is compared with a peak measured in the same run: square matmuls (jnp.dot, torch.mm)
in fp32 and bf16 (jnp.dot bf16 with a float32 result, as popjax's bf16 layers compute, and with a bf16 result,
which XLA:CPU runs in fp32), measured before and after the model rows (the best of the two is the peak).

``popjax extract`` end to end with these converted weights: ``benchmarks/extraction.py --weights converted``.

    python benchmarks/extract_throughput.py [--quick] [--batch-sizes 8 32] [--markdown]
                                            [--out benchmarks/out/extract_throughput.json]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _env import (environment, interleaved, jax_matmul_gflops, markdown_table, median, per_call, rel_err,
                  standard_arguments, write_result)
from extraction import converted_weights, torch_reference

IMAGE = 224


# --------------------------------------------------------------------------------------------- models
def torch_wrapper(net):
    """uint8 NHWC frames -> 2048-d features, preprocessing included (the module timed and exported)."""
    import torch

    from popjax.weights import PREPROCESSING

    spec = PREPROCESSING["torch"]

    class Features(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(spec["mean"]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(spec["std"]).view(1, 3, 1, 1))

        def forward(self, frames):
            x = frames.permute(0, 3, 1, 2).float() / 255.0   # NHWC memory = channels_last NCHW view
            return self.net.features((x - self.mean) / self.std)

    return Features(net).eval()


def conv_macs_per_image(net) -> int:
    """Multiply-adds of every convolution of ``net.features`` on one 224 x 224 image (hooks)."""
    import torch

    total = []

    def hook(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total.append(output.numel() * k)

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net.features(torch.zeros(1, 3, IMAGE, IMAGE))
    for h in handles:
        h.remove()
    return int(sum(total))


def prepare(workdir: Path, args) -> dict:
    """Torch module, its .safetensors, the popjax conversion, the ONNX export: all from one set of weights."""
    import torch

    t = time.perf_counter()
    net = torch_reference(args.seed)
    popjax_dir, meta = converted_weights(net, workdir)
    wrapped = torch_wrapper(net)
    onnx_path = workdir / "resnet50_features.onnx"
    torch.onnx.export(wrapped, (torch.zeros(2, IMAGE, IMAGE, 3, dtype=torch.uint8),), str(onnx_path),
                      dynamo=False, opset_version=17, input_names=["frames"], output_names=["features"],
                      dynamic_axes={"frames": {0: "batch"}, "features": {0: "batch"}})
    return {"net": net, "wrapped": wrapped, "onnx": onnx_path, "popjax_dir": popjax_dir,
            "metadata": meta, "macs": conv_macs_per_image(net), "setup_s": round(time.perf_counter() - t, 1)}


# ------------------------------------------------------------------------------------------- runners
def popjax_runner(directory, batch: int, dtype: str, devices: str):
    import jax
    import jax.numpy as jnp

    from popjax import Backbone, parallel
    from popjax.weights import load_backbone

    variables, metadata = load_backbone(directory)
    mesh = parallel.local_mesh() if devices == "all" else parallel.data_mesh(jax.local_devices()[:1])
    bb = Backbone(variables, metadata, dtype=jnp.bfloat16 if dtype == "bf16" else jnp.float32, batch_size=batch,
                  mesh=mesh)
    return bb.features, {"devices": mesh.size, "padded_batch": bb.batch_size}


def torch_runner(wrapped, dtype: str, compile_: bool = False):
    import torch

    model = wrapped.to(memory_format=torch.channels_last)
    if compile_:
        model = torch.compile(model)

    def run(frames):
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
            return model(torch.from_numpy(frames)).float().numpy()

    return run, {"threads": torch.get_num_threads()}


def ort_runner(onnx_path, provider: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), so, providers=[provider])

    def run(frames):
        return sess.run(None, {"frames": frames})[0]

    return run, {"provider": sess.get_providers()[0], "intra_op_threads": threads}


# --------------------------------------------------------------------------------------------- peaks
def matmul_peaks(n: int, reps: int) -> dict:
    """GFLOP/s of an n x n x n matmul: jnp.dot (one JAX device; XLA's intra-op pool) and torch.mm, fp32/bf16."""
    import torch

    out = {f"jax_{k}": v for k, v in jax_matmul_gflops(n, reps).items()}
    a32 = np.random.default_rng(0).standard_normal((n, n), np.float32)
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.from_numpy(a32).to(dt)
        s = median(per_call(lambda a=a: torch.mm(a, a), reps))
        out[f"torch_{name}"] = round(2.0 * n ** 3 / s / 1e9, 1)
    return out


def combine_peaks(before: dict, after: dict, n: int) -> dict:
    """The best of two measurements (before and after the model rows: the load of a shared machine drifts)."""
    best = {k: max(before[k], after[k]) for k in before}
    return {**best, "peak_fp32": max(best["jax_fp32"], best["torch_fp32"]),
            "peak_bf16": max(best["jax_bf16"], best["torch_bf16"]), "n": n, "before": before, "after": after}


def markdown(rows: list[dict]) -> str:
    """The timed rows as RESULTS.md holds them: frames/s, GFLOP/s and % of the dtype's matmul peak."""
    return markdown_table(["implementation", "dtype", "batch", "frames/s", "GFLOP/s", "% of dtype peak"],
                          [[r["label"], r["dtype"], r["batch"], r["frames_per_s"], r["achieved_gflop_per_s"],
                            f"{100 * r['fraction_of_peak']:.1f}%"] for r in rows if "frames_per_s" in r])


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 8 32 (quick: 18)")
    parser.add_argument("--calls", type=int, default=None,
                        help="timed calls per row and round (default 2; quick 1); the row is the median of all")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds over every row (default 3; quick 3)")
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    standard_arguments(parser, "extract_throughput", devices_like="the popjax CLI",
                       quick="batch 18, 3 rounds x 1 call, no single-device bf16")
    args = parser.parse_args()
    q = args.quick
    args.batch_sizes = args.batch_sizes or ([18] if q else [8, 32])
    args.calls = args.calls or (1 if q else 2)
    args.rounds = args.rounds or 3

    from popjax import parallel, runtime

    runtime.retain_freed_memory()   # as the popjax CLI does (torch and onnxruntime share the process)
    if args.devices == "all":
        parallel.use_all_cpu_cores()   # before JAX starts, as the popjax CLI does
    import jax
    import onnxruntime as ort
    import torch

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    doc = {"what": "ResNet50 224x224 features, uint8 frames -> float32 [B, 2048], preprocessing included; "
                   "random weights shared by all implementations", "quick": q, "environment": environment()}
    t_start = time.perf_counter()

    work = Path(tempfile.mkdtemp(prefix="popjax-bench-throughput-"))
    prep = prepare(work, args)
    flop_per_image = 2 * prep["macs"]
    doc["model"] = {"conv_macs_per_image": prep["macs"], "flop_per_image": flop_per_image,
                    "note": "convolutions only (BN, ReLU, pooling, preprocessing not counted); torchvision quotes "
                            "4.09 GMACs incl. the 2.05 M-MAC classifier", "setup_s": prep["setup_s"]}
    print(f"{jax.device_count()} JAX {jax.default_backend()} devices, {cores} cores, torch threads "
          f"{torch.get_num_threads()}; ResNet50 conv MACs/image {prep['macs'] / 1e9:.3f} G "
          f"({flop_per_image / 1e9:.2f} GFLOP); setup {prep['setup_s']} s")

    rng = np.random.default_rng(args.seed)
    configs = []  # (impl, variant, dtype, batch)
    for b in args.batch_sizes:
        for dt in ("fp32", "bf16"):
            configs.append(("popjax", "all", dt, b))
            if dt == "fp32" or not q:
                configs.append(("popjax", "one", dt, b))
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    for b in args.batch_sizes:
        for p in providers:
            configs.append(("onnxruntime", p, "fp32", b))
        for dt in ("fp32", "bf16"):
            configs.append(("torch", "eager", dt, b))
            if args.torch_compile:
                configs.append(("torch", "compile", dt, b))
    if args.devices == "one":
        configs = [c for c in configs if not (c[0] == "popjax" and c[1] == "one")]

    reps = 3 if q else 5
    peaks_before = matmul_peaks(args.matmul_n, reps)
    rows, outputs, built = [], {}, {}   # built: key -> (the timed call, the row's fields known before timing)
    frames_by_batch = {}
    for impl, variant, dt, b in configs:
        frames = frames_by_batch.setdefault(b, rng.integers(0, 256, (b, IMAGE, IMAGE, 3), np.uint8))
        info = {}
        try:
            if impl == "popjax":
                run, info = popjax_runner(prep["popjax_dir"], b, dt, variant)
                label = f"popjax jit, {info['devices']} device{'s' if info['devices'] > 1 else ''}"
            elif impl == "torch":
                run, info = torch_runner(prep["wrapped"], dt, compile_=variant == "compile")
                label = f"torch {variant}, channels_last"
            else:
                run, info = ort_runner(prep["onnx"], variant, cores)
                label = f"onnxruntime {variant.replace('ExecutionProvider', '')} EP"
            first = []
            first_s = per_call(lambda: np.asarray(run(frames), np.float32), 1, warmup=0, outputs=first)[0]
            out = first[0]
            run(frames)   # one more untimed call before the timed rounds
        except Exception as e:  # noqa: BLE001  (torch.compile without a working toolchain, a missing EP, ...)
            rows.append({"impl": impl, "variant": variant, "dtype": dt, "batch": b, "skipped": f"{type(e).__name__}: {e}"[:300]})
            print(f"{impl} {variant} {dt} batch {b}: SKIPPED ({rows[-1]['skipped'][:120]})")
            continue
        key = (impl, variant, dt, b)
        outputs[key] = out
        built[key] = (lambda run=run, frames=frames: run(frames),
                      {"impl": impl, "variant": variant, "label": label, "dtype": dt, "batch": b, **info,
                       "first_call_s": round(first_s, 2)})
        print(f"  {label:34s} {dt:4s} batch {b:3d}: ready (first call {first_s:.2f} s)", flush=True)
    print(f"timing: {args.rounds} interleaved rounds x {args.calls} calls per implementation ...", flush=True)
    timed = interleaved({k: call for k, (call, _) in built.items()}, args.rounds, args.calls)
    for key, times in timed.items():
        s, row = median(times), built[key][1]
        fps = row["batch"] / s
        rows.append({**row, "calls": len(times), "ms_per_batch": round(1e3 * s, 1),
                     "ms_per_batch_min": round(1e3 * min(times), 1), "frames_per_s": round(fps, 2),
                     "achieved_gflop_per_s": round(fps * flop_per_image / 1e9, 1)})
    del built

    # Agreement with torch fp32 eager on the same frames (first batch size).
    b0 = args.batch_sizes[0]
    ref = outputs.get(("torch", "eager", "fp32", b0))
    agreement = {}
    if ref is not None:
        for key, out in outputs.items():
            if key[3] == b0 and key != ("torch", "eager", "fp32", b0):
                spread = float(np.max(np.abs(ref - ref.mean(0))))
                agreement[" ".join(map(str, key[:3]))] = {
                    "rel_err": rel_err(out, ref), "max_abs_over_spread": float(np.max(np.abs(out - ref))) / spread}
    doc["agreement_vs_torch_fp32"] = {"batch": b0, "rel_err": "max|a-b| / max|b|",
                                      "max_abs_over_spread": "max|a-b| / max|b - mean over frames of b|",
                                      "outputs": agreement,
                                      "feature_max_abs": float(np.max(np.abs(ref))) if ref is not None else None}

    peaks = combine_peaks(peaks_before, matmul_peaks(args.matmul_n, reps), args.matmul_n)
    for r in rows:
        if "frames_per_s" in r:
            r["fraction_of_peak"] = round(r["achieved_gflop_per_s"] / peaks[f"peak_{r['dtype']}"], 3)
            r["fraction_of_fp32_peak"] = round(r["achieved_gflop_per_s"] / peaks["peak_fp32"], 3)
    doc["matmul_gflop_per_s"] = peaks
    doc["rows"] = rows

    doc["seconds_total"] = round(time.perf_counter() - t_start, 1)
    shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ report
    print(f"\nResNet50 features, uint8 frames -> float32 [B, 2048], preprocessing inside the timed region; "
          f"{cores} cores, {jax.device_count()} JAX devices")
    print(f"{'implementation':36s} {'dtype':5s} {'batch':>5s} {'frames/s':>9s} {'ms/batch':>9s} "
          f"{'GFLOP/s':>8s} {'%peak':>6s} {'%fp32pk':>7s}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['impl'] + ' ' + r['variant']:36s} {r['dtype']:5s} {r['batch']:5d}  skipped: {r['skipped'][:60]}")
            continue
        print(f"{r['label']:36s} {r['dtype']:5s} {r['batch']:5d} {r['frames_per_s']:9.2f} {r['ms_per_batch']:9.1f} "
              f"{r['achieved_gflop_per_s']:8.1f} {100 * r['fraction_of_peak']:5.1f}% {100 * r['fraction_of_fp32_peak']:6.1f}%")
    print("onnxruntime bf16: not run (the CPU EP has no bf16 convolution kernels)")
    print(f"\nmatmul {peaks['n']}^3 GFLOP/s, best of before/after the rows: jnp.dot fp32 {peaks['jax_fp32']}, "
          f"bf16 -> fp32 result {peaks['jax_bf16']}, bf16 -> bf16 result {peaks['jax_bf16_result']}; "
          f"torch.mm fp32 {peaks['torch_fp32']}, bf16 {peaks['torch_bf16']} "
          f"(peaks: fp32 {peaks['peak_fp32']}, bf16 {peaks['peak_bf16']})")
    for when in ("before", "after"):
        print(f"  {when:6s}: " + ", ".join(f"{k} {v}" for k, v in peaks[when].items()))
    print(f"\nagreement with torch fp32 eager (batch {b0}): max|a-b|/max|b|, and max|a-b| / max|b - mean_frames b|")
    for k, v in agreement.items():
        print(f"  {k:40s} {v['rel_err']:.2e}  {v['max_abs_over_spread']:.2e}")
    if args.markdown:
        print("\n" + markdown(rows))

    print(f"\n{doc['seconds_total']} s -> {write_result(args.out, doc)}")


if __name__ == "__main__":
    main()

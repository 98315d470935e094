"""How fast is popjax's GPU path? Everything an accelerator runs, in one short run (sized for <= 5 minutes on one
H200 with the compilation cache on; ``--quick`` runs the same code at CPU sizes, which is how it is checked
without a GPU). The JSON is written after every section, so a run cut short keeps what it measured.

1. ``backbone``: ResNet50 features (random v1.5 weights: the speed of converted ones), ``Backbone.features``
   from uint8 host frames to float32 host features (transfers and preprocessing included) and the jitted
   forward alone on frames already on the device, fp32 and bf16 (bf16 products, float32 sums), over batch
   sizes; frames/s, TFLOP/s and % of a square-matmul peak measured in the same run; bf16 vs fp32 agreement.
   PyTorch on the same device for reference when it sees one (``popjax.testing.torch_resnet``: torchvision's
   ResNet50; channels_last, autocast).
2. ``decode``: ``sample_frames`` videos/s with a worker per host core, CPU (one ffmpeg thread each) and NVDEC
   (``decoder="cuda"``), on generated 720p / 1080p H.264 clips (6 s, 30 fps); NVDEC's frames vs the CPU's
   (mean absolute difference in grey levels) and how many videos NVDEC left to the CPU.
3. ``extract``: ``popjax extract --decoder auto`` end to end on such clips (random backbone), its report's rates.
4. ``fit``: ``training.fit`` (3 vmapped trials, the data on the devices) of every Table-1 variant, steps/s.
5. ``gradcam``: the explainer of ``popjax explain`` (random ResNet50 + multimodal model), ms per 18-frame video
   (``benchmarks/gradcam.py``'s ``explainer_latency``, in popjax explain's placement only).
6. ``agreement``: features on the accelerator (XLA's convolutions) vs on the host CPU (popjax's CPU kernels),
   float32, converted-weight scale frames.

    python benchmarks/gpu.py [--quick] [--sections backbone decode extract fit gradcam agreement]
                             [--batches 64 256 512] [--out benchmarks/out/gpu.json]

On a GPU machine whose python3 has JAX with CUDA, flax, optax, orbax and torch, from the repository root:
    PYTHONPATH=. python3 benchmarks/gpu.py --out OUT_DIR/gpu.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _env import environment, jax_matmul_gflops, median, per_call, rel_err, write_result

FLOP_PER_FRAME = 8.17e9   # 2 x ResNet50's 4.087 G conv multiply-adds at 224 px (extract_throughput.py counts them)
SECTIONS = ("backbone", "decode", "extract", "fit", "gradcam", "agreement")


def backbone(args, peak: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from popjax import Backbone, parallel

    rows, outputs = [], {}
    frames_all = np.random.default_rng(0).integers(0, 256, (max(args.batches), 224, 224, 3), dtype=np.uint8)
    base = Backbone.random(0)
    for dtype in ("fp32", "bf16"):
        for batch in args.batches:
            bb = Backbone(jax.device_get(base.variables), base.metadata, batch_size=batch,
                          dtype=jnp.bfloat16 if dtype == "bf16" else jnp.float32)
            frames = frames_all[:bb.batch_size]
            first = []
            first_s = per_call(lambda: bb.features(frames), 1, warmup=0, outputs=first)[0]
            out = first[0]
            host = median(per_call(lambda: bb.features(frames), args.calls))
            on_device = jax.device_put(frames, parallel.batch_sharding(bb.mesh))
            device = median(per_call(lambda: bb._features(bb.inference_variables, on_device).block_until_ready(), args.calls))
            outputs[(dtype, batch)] = out
            row = {"dtype": dtype, "batch": bb.batch_size, "devices": bb.mesh.size, "first_call_s": round(first_s, 2),
                   "host_to_host_frames_per_s": round(len(frames) / host, 1),
                   "on_device_frames_per_s": round(len(frames) / device, 1),
                   "on_device_tflop_per_s": round(len(frames) / device * FLOP_PER_FRAME / 1e12, 2)}
            row["on_device_pct_of_matmul_peak"] = round(100 * row["on_device_tflop_per_s"] * 1e3 / peak[dtype], 1)
            rows.append(row)
            print(f"  popjax {dtype} batch {row['batch']:4d}: {row['host_to_host_frames_per_s']:9.1f} frames/s host->host, "
                  f"{row['on_device_frames_per_s']:9.1f} on device ({row['on_device_tflop_per_s']} TFLOP/s, "
                  f"{row['on_device_pct_of_matmul_peak']}% of peak), "
                  f"first call {first_s:.1f} s", flush=True)
    b = args.batches[0]
    agreement = rel_err(outputs[("bf16", b)], outputs[("fp32", b)])
    print(f"  bf16 vs fp32 features, max|a-b|/max|b|: {agreement:.2e}")
    return {"rows": rows, "bf16_vs_fp32_rel_err": agreement, "torch": torch_extraction(args, frames_all)}


def torch_extraction(args, frames_all) -> list:
    """A PyTorch ResNet50 (torchvision's architecture: ``popjax.testing.torch_resnet``, random weights), uint8 NHWC
    frames -> features on the same GPU, as a reference."""
    try:
        import torch

        from popjax.testing.torch_resnet import ResNet50
    except ImportError as e:
        return [{"skipped": f"torch not importable: {e}"}]
    if not torch.cuda.is_available():
        return [{"skipped": "torch sees no CUDA device"}]
    from popjax.weights import PREPROCESSING

    net = ResNet50().cuda().eval().to(memory_format=torch.channels_last)
    mean = torch.tensor(PREPROCESSING["torch"]["mean"], device="cuda").view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESSING["torch"]["std"], device="cuda").view(1, 3, 1, 1)
    rows = []
    for dtype in ("fp32", "bf16"):
        for batch in args.batches:
            frames = frames_all[:batch]

            def run(frames=frames, dtype=dtype):
                with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=dtype == "bf16"):
                    x = torch.from_numpy(frames).cuda().permute(0, 3, 1, 2).float() / 255.0
                    x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
                    return net.features(x).float().cpu().numpy()

            run()
            s = median(per_call(run, args.calls))
            rows.append({"dtype": dtype, "batch": batch, "host_to_host_frames_per_s": round(batch / s, 1)})
            print(f"  torch  {dtype} batch {batch:4d}: {batch / s:9.1f} frames/s host->host", flush=True)
    return rows


def decode(args) -> dict:
    """videos/s, CPU (a worker per core, one ffmpeg thread each) and NVDEC, and NVDEC's frames vs the CPU's."""
    import decode as dec
    from popjax.data.video import sample_frames
    from popjax.runtime import usable_cores

    cores = usable_cores()   # as popjax extract counts its workers
    rows, agreement = [], {}
    for size in args.decode_sizes:
        clips = dec.generated_clips(Path(args.clip_dir), size, args.clips)
        for decoder in ("cpu", "cuda"):
            r = {"clips": size, **dec.decode(clips, cores, args.decode_repeats, threads=1, decoder=decoder)}
            rows.append(r)
            print(f"  {size} {decoder:4s} x{cores} workers: {r['videos_per_s']:8.2f} videos/s "
                  f"({r['videos_per_s'] * 18:8.0f} frames/s), {r['core_s_per_video']:.3f} core-s/video, "
                  f"decoded by {r['decoded_by']}", flush=True)
        a, b = sample_frames(clips[0]), sample_frames(clips[0], decoder="cuda")
        agreement[size] = {"decoded_by": b.info["decoder"], "fallback": b.info.get("fallback"),
                           "mean_abs_diff": float(np.abs(a.frames.astype(np.float64) - b.frames).mean()),
                           "same_timestamps": bool(np.array_equal(a.timestamps, b.timestamps))}
        print(f"  {size} NVDEC vs CPU frames: {agreement[size]}", flush=True)
    return {"host_cores": cores, "rows": rows, "nvdec_vs_cpu": agreement}


def extract_end_to_end(args) -> dict:
    """``popjax extract --decoder auto`` on generated clips, in a fresh process; the report's throughput."""
    import decode as dec

    clips = dec.generated_clips(Path(args.clip_dir), args.decode_sizes[-1], args.clips)
    work = Path(tempfile.mkdtemp(prefix="popjax-gpu-extract-"))
    manifest = work / "manifest.csv"
    from popjax.data.manifest import assign_split

    train = [f"v{k:04d}" for k in range(1000) if assign_split(f"v{k:04d}") == "train"]
    ids = [train[0]] + [f"w{k:04d}" for k in range(args.extract_videos - 1)]   # a training row, for the median
    lines = ["id,video,headline,views,followers"] + [
        f"{id_},{clips[k % len(clips)].absolute()},a headline about video {k},{100 * (k % 7 + 1)},1000"
        for k, id_ in enumerate(ids)]
    manifest.write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "popjax.cli", "extract", "--manifest", str(manifest), "--out", str(work / "out"),
           "--decoder", "auto", "--quiet"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    report_path = work / "out" / "report.json"
    if not report_path.is_file():
        return {"error": proc.stderr[-2000:], "returncode": proc.returncode}
    report = json.loads(report_path.read_text())
    out = {"videos": args.extract_videos, "clips": args.decode_sizes[-1], "returncode": proc.returncode,
           "wall_s": round(wall, 1), "throughput": report["throughput"]}
    t_ = report["throughput"]
    print(f"  {args.extract_videos} {args.decode_sizes[-1]} videos: loop {t_['videos_per_s']} videos/s "
          f"({t_['frames_per_s']} frames/s), after the first call {t_['steady_videos_per_s']}; decoded by "
          f"{t_['decoded_by']}; wall {out['wall_s']} s", flush=True)
    return out


def fit(args) -> list:
    import fit_steps

    return [fit_steps.fit_rate(v, args.fit_batch, args.fit_steps, args.fit_epochs, 3) for v in fit_steps.VARIANTS]


def agreement(args) -> dict:
    """float32 features of the same frames on the default device with XLA's convolutions (what a GPU runs) and on
    the host CPU with popjax's CPU kernels (Winograd, pointwise products)."""
    import jax

    from popjax import Backbone, parallel

    frames = np.random.default_rng(1).integers(0, 256, (args.agreement_frames, 224, 224, 3), dtype=np.uint8)
    base = Backbone.random(0)
    variables = jax.device_get(base.variables)
    here = Backbone(variables, base.metadata, batch_size=len(frames), kernels="xla").features(frames)
    cpu = Backbone(variables, base.metadata, batch_size=len(frames), kernels="cpu",
                   mesh=parallel.data_mesh(jax.devices("cpu")[:1])).features(frames)
    err = rel_err(here, cpu)
    print(f"  {jax.default_backend()} (XLA's convolutions) vs host CPU (popjax's CPU kernels), fp32: "
          f"max|a-b|/max|b| = {err:.2e}")
    return {"frames": len(frames), "default_backend": jax.default_backend(), "rel_err": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU sizes (< 3 min on 2 cores)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default 64 256 512; quick 8")
    parser.add_argument("--calls", type=int, default=None, help="timed calls per row (default 10; quick 2)")
    parser.add_argument("--clip-dir", default="benchmarks/out/decode_clips", help="generated clips, kept")
    parser.add_argument("--out", default="benchmarks/out/gpu.json")
    args = parser.parse_args()
    q = args.quick
    args.batches = args.batches or ([8] if q else [64, 256, 512])
    args.calls = args.calls or (2 if q else 10)
    args.decode_sizes, args.clips, args.decode_repeats = (["720p"], 2, 1) if q else (["720p", "1080p"], 8, 2)
    args.extract_videos = 4 if q else 64
    args.fit_batch, args.fit_steps, args.fit_epochs = (64, 2, 2) if q else (512, 8, 3)
    args.agreement_frames = 2 if q else 8

    from popjax import runtime

    runtime.configure()   # the compilation cache; on a CPU, its settings (as the popjax command)
    import jax

    import gradcam

    print(f"JAX {jax.__version__}: {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})")
    doc = {"what": "GPU path: ResNet50 features, decoding, extract, fit, Grad-CAM, GPU vs CPU", "quick": q,
           "environment": environment(), "devices": [str(d) for d in jax.devices()], "sections_s": {}}
    t0 = time.perf_counter()
    doc["matmul_gflop_per_s"] = jax_matmul_gflops(1024 if q else 8192, 10)
    print(f"jnp.dot GFLOP/s: {doc['matmul_gflop_per_s']}")
    runs = {"backbone": lambda: backbone(args, doc["matmul_gflop_per_s"]), "decode": lambda: decode(args),
            "extract": lambda: extract_end_to_end(args), "fit": lambda: fit(args),
            "gradcam": lambda: gradcam.explainer_latency([1] if q else [1, 8], 1 if q else 3, quick=q,
                                                      explain_only=True), "agreement": lambda: agreement(args)}
    for name in args.sections:
        print(name, flush=True)
        t = time.perf_counter()
        try:
            doc[name] = runs[name]()
        except Exception as e:   # keep the other sections: a GPU run is a one-shot run
            doc[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"  {name} failed: {doc[name]['error']}", flush=True)
        doc["sections_s"][name] = round(time.perf_counter() - t, 1)
        doc["seconds_total"] = round(time.perf_counter() - t0, 1)
        write_result(args.out, doc)
    print(f"{doc['seconds_total']} s ({doc['sections_s']}) -> {args.out}")


if __name__ == "__main__":
    main()

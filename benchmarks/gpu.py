"""The GPU path in one short run, for a lent accelerator (a few minutes on one GPU; ``--quick`` runs the same code
at CPU sizes, which is how it is tested without one):

1. ResNet50 features (random v1.5 weights: the speed of converted ones): ``Backbone.features`` from uint8 host
   frames to float32 host features (transfers and preprocessing included) and the jitted forward alone on
   frames already on the device, fp32 and bf16 (bf16 products, float32 sums), over batch sizes; frames/s and
   TFLOP/s against a square-matmul peak measured in the same run; bf16 vs fp32 agreement. PyTorch on the same
   device for reference when it sees one (torchvision ResNet50, channels_last, autocast bf16, same frames).
2. Train steps: ``jax.jit(Program.train_step)`` of the headline biLSTM ('last', B 64, T 20) and of the
   multimodal model with frozen encoders (``benchmarks/train_throughput.py``'s setup), steps/s.
3. Grad-CAM: the explainer of ``popjax explain`` (random ResNet50 + multimodal model), ms per 18-frame video.

    python benchmarks/gpu.py [--quick] [--batches 64 256 512] [--out benchmarks/out/gpu.json]

On the lent machine (its python3 has JAX with CUDA, flax, optax, orbax, torch, torchvision):
    PYTHONPATH=. python3 benchmarks/gpu.py --out $OUT/gpu.json
"""
from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from _env import environment, jax_matmul_gflops, median, per_call, rel_err, write_result  # noqa: E402

FLOP_PER_FRAME = 8.17e9   # 2 x ResNet50's 4.087 G conv multiply-adds at 224 px (extract_throughput.py counts them)


def extraction(args) -> dict:
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
            t = time.perf_counter()
            out = bb.features(frames)
            first_s = time.perf_counter() - t
            host = median(per_call(lambda: bb.features(frames), args.calls))
            on_device = jax.device_put(frames, parallel.batch_sharding(bb.mesh))
            device = median(per_call(lambda: bb._features(bb.inference_variables, on_device).block_until_ready(), args.calls))
            outputs[(dtype, batch)] = out
            row = {"dtype": dtype, "batch": bb.batch_size, "devices": bb.mesh.size, "first_call_s": round(first_s, 2),
                   "host_to_host_frames_per_s": round(len(frames) / host, 1),
                   "on_device_frames_per_s": round(len(frames) / device, 1),
                   "on_device_tflop_per_s": round(len(frames) / device * FLOP_PER_FRAME / 1e12, 2)}
            rows.append(row)
            print(f"  popjax {dtype} batch {row['batch']:4d}: {row['host_to_host_frames_per_s']:9.1f} frames/s host->host, "
                  f"{row['on_device_frames_per_s']:9.1f} on device ({row['on_device_tflop_per_s']} TFLOP/s), "
                  f"first call {first_s:.1f} s", flush=True)
    b = args.batches[0]
    agreement = rel_err(outputs[("bf16", b)], outputs[("fp32", b)])
    print(f"  bf16 vs fp32 features, max|a-b|/max|b|: {agreement:.2e}")
    return {"rows": rows, "bf16_vs_fp32_rel_err": agreement, "torch": torch_extraction(args, frames_all)}


def torch_extraction(args, frames_all) -> list:
    """torchvision ResNet50 (random weights), uint8 NHWC frames -> features on the same GPU, as a reference."""
    try:
        import torch
        import torchvision
    except ImportError as e:
        return [{"skipped": f"torch/torchvision not importable: {e}"}]
    if not torch.cuda.is_available():
        return [{"skipped": "torch sees no CUDA device"}]
    net = torchvision.models.resnet50()
    net.fc = torch.nn.Identity()
    net = net.cuda().eval().to(memory_format=torch.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406], device="cuda").view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device="cuda").view(1, 3, 1, 1)
    rows = []
    for dtype in ("fp32", "bf16"):
        for batch in args.batches:
            frames = frames_all[:batch]

            def run(frames=frames, dtype=dtype):
                with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=dtype == "bf16"):
                    x = torch.from_numpy(frames).cuda().permute(0, 3, 1, 2).float() / 255.0
                    x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
                    return net(x).float().cpu().numpy()

            run()
            s = median(per_call(run, args.calls))
            rows.append({"dtype": dtype, "batch": batch, "host_to_host_frames_per_s": round(batch / s, 1)})
            print(f"  torch  {dtype} batch {batch:4d}: {batch / s:9.1f} frames/s host->host", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU sizes: batch 8, few calls, small matmul")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default 64 256 512; quick 8")
    parser.add_argument("--calls", type=int, default=None, help="timed calls per row (default 10; quick 2)")
    parser.add_argument("--out", default="benchmarks/out/gpu.json")
    args = parser.parse_args()
    q = args.quick
    args.batches = args.batches or ([8] if q else [64, 256, 512])
    args.calls = args.calls or (2 if q else 10)

    import jax

    import train_throughput as tt
    from popjax import training

    print(f"JAX {jax.__version__}: {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})")
    doc = {"what": "GPU path: ResNet50 features, train steps, Grad-CAM", "quick": q, "environment": environment(),
           "devices": [str(d) for d in jax.devices()]}
    t0 = time.perf_counter()
    doc["matmul_gflop_per_s"] = jax_matmul_gflops(1024 if q else 8192, 10)
    print(f"jnp.dot GFLOP/s: {doc['matmul_gflop_per_s']}")
    print("ResNet50 features")
    doc["extraction"] = extraction(args)
    # train_throughput's own settings: B 64, T 20, 300-d words, default model sizes
    targs = types.SimpleNamespace(vocab=20_000, rounds=2 if q else 5, steps_per_round=3 if q else 20, quick=q,
                                  gradcam_batches=[1] if q else [1, 8], gradcam_calls=1 if q else 3)
    print("train steps (jit(step), one device)")
    doc["train_steps"] = (tt.popjax_rates(targs, "headline", "last", variants=("plain",))
                          + tt.popjax_rates(targs, "multimodal", "attention", freeze=training.ENCODERS,
                                            variants=("plain",)))
    print("Grad-CAM, 18-frame videos")
    doc["gradcam"] = tt.gradcam(targs)
    doc["seconds_total"] = round(time.perf_counter() - t0, 1)
    print(f"{doc['seconds_total']} s -> {write_result(args.out, doc)}")


if __name__ == "__main__":
    main()

"""How close does ``popjax extract`` come, end to end, to what its two parts (decoding, the backbone) allow?

On the synthetic demo corpus:

* end to end: the ``popjax extract`` command in a fresh process (startup, backbone weights or random init +
  BatchNorm calibration, XLA compilation, decoding + ResNet50, TFDS writing), over the demo corpus's videos; its
  wall time split into process start, work outside the decode+encode loop and the loop, the loop's rate, and the
  loop after its first backbone call (which transforms the Winograd kernels and compiles). ``--weights``: with
  extract's default random backbone (``random``) and/or with ``--weights`` of a random torchvision-layout ResNet50
  converted by ``popjax.weights.convert`` (``converted``: no calibration), one fresh process each, in the order
  given (the first compiles ResNet50 unless the persistent compilation cache holds it; the next finds it there);
* decode only: ``sample_frames`` over the same videos, with as many threads as ``extract`` uses;
* backbone only: ``Backbone.random(...).features`` on random uint8 frames after a warm-up call, in the
  calls ``extract`` makes (whole videos: ``--batch-size`` rounded to a multiple of N frames, every device);
* the bound decoding and the backbone allow together when they share the machine serially,
  1 / (1/decode + 1/backbone) videos/s, and with perfect overlap, min(decode, backbone).

96 videos by default: enough work that the one-time first backbone call weighs as in a real extraction.

    python benchmarks/extraction.py [--videos 96] [--weights random converted] [--quick] [--markdown]
                                    [--out benchmarks/out/extraction.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _env import environment, markdown_table, per_call, standard_arguments, write_result

REPO = Path(__file__).resolve().parents[1]


def demo_corpus(directory: Path, videos: int) -> tuple[Path, list[Path]]:
    """The demo corpus of ``videos`` videos, in ``directory/<videos>`` (one per size: the draw depends on
    it), written once and kept between runs."""
    from popjax.data.demo import write_corpus

    directory = directory / str(videos)
    manifest = write_corpus(directory, num_videos=videos, seed=0)   # idempotent: kept between runs
    return manifest, sorted((directory / "videos").glob("*.mp4"))


def end_to_end(manifest: Path, args, weights: Path | None = None, extra: list[str] = ()) -> dict:
    """``popjax extract`` (``--weights`` when given, else its random backbone) in a fresh process, into a
    fresh directory; its wall time is split into process start, setup outside the decode+encode loop
    (weights, BN calibration, compilation, dataset assembly) and the loop; with the process's peak RSS."""
    out = Path(tempfile.mkdtemp(prefix="popjax-bench-extract-"))
    cmd = [sys.executable, "-m", "popjax.cli", "extract", "--manifest", str(manifest), "--out", str(out),
           "--num-frames", str(args.num_frames), "--batch-size", str(args.batch_size),
           "--workers", str(args.workers), "--quiet", *extra]
    if weights is not None:
        cmd += ["--weights", str(weights)]
    try:
        with tempfile.TemporaryFile() as log:
            t = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            trace: list[tuple[float, float]] = []
            sampler = threading.Thread(target=_sample_rss, args=(proc.pid, t, trace), daemon=True)
            sampler.start()
            _, status, usage = os.wait4(proc.pid, 0)   # this child's own resource usage (peak RSS)
            wall = time.perf_counter() - t
            sampler.join()
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                log.seek(0)
                raise SystemExit(f"popjax extract failed ({proc.returncode}):\n{log.read()[-3000:].decode()}")
        report = json.loads((out / "report.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    n, loop = report["extracted"], report["throughput"]
    return {
        "weights": "--weights (converted)" if weights else "random + BN calibration", "backbone": report["backbone"],
        "videos": n, "wall_s": round(wall, 2), "videos_per_s": round(n / wall, 3),
        "frames_per_s": round(n * args.num_frames / wall, 2),
        "process_start_s": round(wall - report["seconds_total"], 2), "extract_seconds_total": report["seconds_total"],
        "outside_loop_s": round(report["seconds_total"] - loop["seconds"], 2),
        "loop_s": loop["seconds"], "loop_videos_per_s": loop["videos_per_s"], "loop_frames_per_s": loop["frames_per_s"],
        "first_call_s": loop["first_call_seconds"], "steady_videos_per_s": loop["steady_videos_per_s"],
        "steady_frames_per_s": loop["steady_frames_per_s"],
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),   # Linux: KiB
        # RSS once start-up (weights, calibration, compilation) is long over: the second half of the run
        "rss_max_second_half_mib": max((m for s, m in trace if s >= wall / 2), default=None),
        "rss_trace_mib": [(round(s), m) for s, m in trace[::5]],
    }


def _sample_rss(pid: int, t0: float, trace: list) -> None:
    """(seconds, resident MiB) of process ``pid`` every second, until it ends (Linux /proc)."""
    while True:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
        if kib is None:   # a zombie: ended, not yet reaped
            return
        trace.append((time.perf_counter() - t0, round(kib / 1024, 1)))
        time.sleep(1.0)


def decode_only(videos: list[Path], args) -> dict:
    """``sample_frames`` over ``videos`` with ``workers`` threads (as ``extract`` runs them)."""
    from popjax.data.video import sample_frames

    workers = args.workers or os.cpu_count() or 1

    def one(path):
        return sample_frames(path, args.num_frames, 6.0, 224)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, videos[:workers]))   # page cache, ffmpeg binary
        times = per_call(lambda: list(pool.map(one, videos)), args.runs, warmup=0)
    wall = statistics.median(times)
    return {"videos": len(videos), "workers": workers, "runs": args.runs, "wall_s": round(wall, 3),
            "videos_per_s": round(len(videos) / wall, 3),
            "frames_per_s": round(len(videos) * args.num_frames / wall, 2)}


def backbone_only(args) -> dict:
    """Random ResNet50 features on random uint8 frames, in the calls ``extract`` makes: a Backbone whose
    batch holds whole videos (``frames_per_call``), over every local device (the CLI's one per core)."""
    import jax

    from popjax.backbone import Backbone
    from popjax.extract import frames_per_call

    backbone = Backbone.random(0, batch_size=frames_per_call(args.batch_size, args.num_frames))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (backbone.batch_size, 224, 224, 3), np.uint8)
    first_call = per_call(lambda: backbone.features(frames), 1, warmup=0)[0]   # compiles
    wall = sum(per_call(lambda: backbone.features(frames), args.backbone_calls, warmup=1))
    fps = backbone.batch_size * args.backbone_calls / wall
    return {
        "platform": jax.default_backend(), "devices": jax.device_count(), "batch_size": backbone.batch_size,
        "first_call_s": round(first_call, 2), "calls": args.backbone_calls, "wall_s": round(wall, 3),
        "frames_per_s": round(fps, 2), "videos_per_s": round(fps / args.num_frames, 3),
    }


def torch_reference(seed: int = 0):
    """A torch ResNet50 with torchvision's parameter names (``popjax.testing.torch_resnet``), random weights and
    randomised BatchNorm statistics, in eval mode."""
    import torch

    from popjax.testing.torch_resnet import ResNet50, randomize_batchnorm

    torch.manual_seed(seed)
    return randomize_batchnorm(ResNet50(), seed).eval()


def converted_weights(net, directory: Path) -> tuple[Path, dict]:
    """``net``'s state dict saved as .safetensors in ``directory`` and converted by
    ``popjax.weights.convert("torchvision", ...)``: the backbone directory ``popjax extract --weights`` takes,
    and its metadata."""
    from safetensors.torch import save_file

    from popjax.weights import convert

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(directory / "resnet50.safetensors"))
    meta = convert("torchvision", directory / "resnet50.safetensors", directory / "popjax_backbone")
    return directory / "popjax_backbone", meta


def markdown(doc: dict) -> str:
    """The rows of the printed table, as RESULTS.md holds them (videos/s)."""
    return markdown_table(["videos/s", "", "note"], [[name, v, note] for name, v, _, note in table_rows(doc)])


def table_rows(doc: dict) -> list[tuple]:
    """(name, videos/s, frames/s, note) of every end-to-end run, decode only, backbone only and the bounds."""
    n = doc["num_frames"]
    dec, bb, bound = doc["decode_only"], doc["backbone_only"], doc["bound"]
    rows = []
    for e2e in doc["end_to_end"]:
        rows += [
            (f"end to end (popjax extract, {e2e['weights']}, wall)", e2e["videos_per_s"], e2e["frames_per_s"],
             f"{e2e['wall_s']} s: start {e2e['process_start_s']} s + outside the loop {e2e['outside_loop_s']} s "
             f"+ loop {e2e['loop_s']} s"),
            ("  its decode+encode loop", e2e["loop_videos_per_s"], e2e["loop_frames_per_s"],
             f"1st call incl.; {e2e['loop_over_serial']} of the serial bound"),
            ("  the loop after its 1st backbone call", e2e["steady_videos_per_s"], e2e["steady_frames_per_s"],
             f"1st call (kernel transforms, compilation): {e2e['first_call_s']} s; "
             f"{e2e['steady_over_serial']} of the serial bound")]
    rows += [
        ("decode only (sample_frames)", dec["videos_per_s"], dec["frames_per_s"], f"{dec['workers']} threads"),
        ("backbone only (extract's calls)", bb["videos_per_s"], bb["frames_per_s"],
         f"{bb['batch_size']} frames/call, {bb['devices']} {bb['platform']} devices"),
        ("bound 1/(1/decode+1/backbone)", bound["serial_videos_per_s"], bound["serial_frames_per_s"], ""),
        ("bound min(decode, backbone)", bound["overlap_videos_per_s"],
         round(bound["overlap_videos_per_s"] * n, 2), "perfect overlap")]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=96, help="demo videos")
    parser.add_argument("--num-frames", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=32, help="frames per backbone call (as extract's)")
    parser.add_argument("--workers", type=int, default=0, help="decoding threads (0: one per core, as extract)")
    parser.add_argument("--weights", nargs="+", choices=["random", "converted"], default=["random"],
                        help="end-to-end runs, in this order: extract's random backbone, or --weights of a "
                             "converted random torchvision-layout ResNet50 (default: random)")
    parser.add_argument("--runs", type=int, default=3, help="decode-only repetitions (median)")
    parser.add_argument("--backbone-calls", type=int, default=8, help="timed full-batch backbone calls")
    parser.add_argument("--corpus", default="benchmarks/out/demo_corpus", help="kept between runs")
    parser.add_argument("--seed", type=int, default=0, help="of the converted weights")
    standard_arguments(parser, "extraction", quick="8 videos, 1 decode run, 3 backbone calls")
    args = parser.parse_args()
    if args.quick:
        args.videos, args.runs, args.backbone_calls = min(args.videos, 8), 1, 3
    from popjax import parallel, runtime

    runtime.retain_freed_memory()   # before threads start, as the popjax CLI does
    parallel.use_all_cpu_cores()   # before JAX starts, as the popjax CLI does

    env = environment()
    manifest, videos = demo_corpus(Path(args.corpus).absolute(), args.videos)
    work = Path(tempfile.mkdtemp(prefix="popjax-bench-extraction-"))
    try:
        weights = None
        if "converted" in args.weights:
            weights, _ = converted_weights(torch_reference(args.seed), work)
        # first: each its own process, nothing else running
        runs = [end_to_end(manifest, args, weights if w == "converted" else None) for w in args.weights]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dec = decode_only(videos, args)
    bb = backbone_only(args)
    serial = 1 / (1 / dec["videos_per_s"] + 1 / bb["videos_per_s"])
    bound = {"serial_videos_per_s": round(serial, 3), "serial_frames_per_s": round(serial * args.num_frames, 2),
             "overlap_videos_per_s": round(min(dec["videos_per_s"], bb["videos_per_s"]), 3)}
    for e2e in runs:
        e2e.update(end_to_end_over_serial=round(e2e["videos_per_s"] / serial, 3),
                   loop_over_serial=round(e2e["loop_videos_per_s"] / serial, 3),
                   steady_over_serial=round(e2e["steady_videos_per_s"] / serial, 3))
    doc = {
        "what": "popjax extract on the SYNTHETIC demo corpus (random ResNet50): end to end vs its parts",
        "videos": args.videos, "num_frames": args.num_frames, "batch_size": args.batch_size,
        "quick": args.quick, "environment": env,
        "end_to_end": runs, "decode_only": dec, "backbone_only": bb, "bound": bound,
    }
    print(f"{args.videos} demo videos, N = {args.num_frames} frames, {os.cpu_count()} CPUs")
    print(f"{'':52s} {'videos/s':>9s} {'frames/s':>9s}  note")
    for name, v, f, note in table_rows(doc):
        print(f"{name:52s} {v:9.3f} {f:9.2f}  {note}")
    if args.markdown:
        print("\n" + markdown(doc))
    print(f"-> {write_result(args.out, doc)}")


if __name__ == "__main__":
    main()

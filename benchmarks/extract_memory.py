"""Does the peak resident memory of ``popjax extract`` grow with the corpus size?

A streaming extraction holds a bounded number of videos (the decoder's read-ahead and at most two shards' examples), so its peak should not grow
with the number of videos.

Runs the ``popjax extract`` command (random ResNet50, default settings) in a fresh process per corpus size,
each on the synthetic demo corpus of that size, and reads the process's peak RSS from ``os.wait4`` (and its RSS
over time from ``/proc``: the peak comes from start-up, not from the videos). One
unrecorded run first fills the compilation cache, so that no measured run compiles while the others do not.

    python benchmarks/extract_memory.py [--videos 96 384] [--shard-videos 64] [--markdown]
                                        [--out benchmarks/out/extract_memory.json]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _env import environment, markdown_table, standard_arguments, write_result
from extraction import demo_corpus, end_to_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, nargs="+", default=[96, 384], help="corpus sizes (demo videos)")
    parser.add_argument("--num-frames", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=32, help="popjax extract --batch-size")
    parser.add_argument("--shard-videos", type=int, default=64, help="popjax extract --shard-videos")
    parser.add_argument("--workers", type=int, default=0, help="decoding threads (0: one per core)")
    parser.add_argument("--corpus", default="benchmarks/out/demo_corpus", help="kept between runs")
    standard_arguments(parser, "extract_memory")
    args = parser.parse_args()

    env = environment()
    manifests = [demo_corpus(Path(args.corpus).absolute(), n)[0] for n in args.videos]
    extra = ["--shard-videos", str(args.shard_videos)]
    end_to_end(manifests[0], args, extra=extra)   # warm-up: the compilation cache
    runs = [end_to_end(m, args, extra=extra) for m in manifests]
    base = runs[0]["peak_rss_mib"]
    print(f"popjax extract, N = {args.num_frames} frames, --batch-size {args.batch_size}, "
          f"--shard-videos {args.shard_videos}")
    print(f"{'videos':>7s} {'peak RSS MiB':>13s} {'vs first':>9s} {'RSS 2nd half':>13s} {'wall s':>8s} "
          f"{'videos/s':>9s}")
    for n, r in zip(args.videos, runs):
        print(f"{n:7d} {r['peak_rss_mib']:13.1f} {r['peak_rss_mib'] / base:9.3f} {r['rss_max_second_half_mib']:13.1f} "
              f"{r['wall_s']:8.1f} {r['videos_per_s']:9.3f}")
    if args.markdown:
        print("\n" + markdown_table(
            ["videos", "peak RSS MiB", f"vs {args.videos[0]}", "RSS 2nd half MiB", "wall s", "videos/s"],
            [[n, r["peak_rss_mib"], round(r["peak_rss_mib"] / base, 3), r["rss_max_second_half_mib"], r["wall_s"],
              r["videos_per_s"]] for n, r in zip(args.videos, runs)]))
    doc = {"what": "peak RSS of popjax extract (random ResNet50) on the SYNTHETIC demo corpus, by corpus size",
           "videos": args.videos, "num_frames": args.num_frames, "batch_size": args.batch_size,
           "shard_videos": args.shard_videos, "environment": env, "runs": runs,
           "peak_ratio_last_over_first": round(runs[-1]["peak_rss_mib"] / base, 3)}
    print(f"-> {write_result(args.out, doc)}")


if __name__ == "__main__":
    main()

"""The ``popjax`` command: thin argument parsing over the library; no logic of its own."""
from __future__ import annotations

import argparse
import json
import sys


def _convert_weights(args) -> int:
    from popjax.weights import WeightsError, convert

    try:
        metadata = convert(args.format, args.input, args.out)
    except WeightsError as e:
        print(f"popjax convert-weights: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, **metadata}, indent=2))
    return 0


def _frames(args) -> int:
    from popjax.data.video import VideoError, resolve_decoder, sample_frames, write_frames

    try:
        sampled = sample_frames(args.video, num_frames=args.num_frames, seconds=args.seconds, size=args.size,
                                decoder=resolve_decoder(args.decoder))
    except VideoError as e:
        print(f"popjax frames: error ({e.reason}): {e}", file=sys.stderr)
        return 1
    write_frames(sampled, args.out)
    info, ts = sampled.info, sampled.timestamps
    print(f"{args.video}: {len(ts)} frames at {ts[0]:.3f}..{ts[-1]:.3f} s of {info['sampled_seconds']:.3f} s "
          f"({info['width']}x{info['height']}, {info['codec']}) -> {args.out}")
    return 0


def _demo(args) -> int:
    from popjax.data.demo import write_corpus

    manifest = write_corpus(args.out, num_videos=args.videos, seed=args.seed)
    print(f"SYNTHETIC demo corpus: {args.videos} videos -> {manifest} (truth.jsonl beside it)")
    return 0


def _extract(args) -> int:
    from popjax.data.manifest import ManifestError
    from popjax.data.video import resolve_decoder
    from popjax.extract import ExtractError, Settings, extract
    from popjax.weights import WeightsError

    settings = Settings(num_frames=args.num_frames, seconds=args.seconds, max_words=args.max_words,
                        image_size=args.image_size, workers=args.workers, shard_videos=args.shard_videos,
                        decoder=resolve_decoder(args.decoder))
    try:
        report = extract(args.manifest, args.out, weights=args.weights, batch_size=args.batch_size,
                         glove=args.glove, settings=settings, seed=args.seed, dtype=args.dtype,
                         progress=not args.quiet)
    except (ManifestError, WeightsError, FileNotFoundError, ExtractError) as e:
        print(f"popjax extract: error: {e}", file=sys.stderr)
        return 2
    import jax

    if jax.process_index() == 0:   # every process returns the same exit code; process 0 speaks
        t = report["throughput"]
        steady = (f"; {t['steady_videos_per_s']} videos/s after the first backbone call, which took "
                  f"{t['first_call_seconds']} s with compilation" if t["steady_videos_per_s"] else "")
        print(f"extracted {report['extracted']} of {report['manifest_rows']} rows "
              f"({t['videos_per_s']} videos/s, {t['frames_per_s']} frames/s this run{steady}) -> {report['dataset']}")
        if report["failed"]:
            print(f"{report['failed']} rows rejected {report['failed_by_reason']}: see {args.out}/errors.jsonl",
                  file=sys.stderr)
    return 1 if report["failed"] else 0


def _predict(args) -> int:
    from popjax.data.manifest import ManifestError
    from popjax.data.video import resolve_decoder
    from popjax.predict import predict_manifest

    try:
        result = predict_manifest(args.workdir, args.manifest, args.out, batch_size=args.batch_size,
                                  dtype=args.dtype, decoder=resolve_decoder(args.decoder), progress=not args.quiet)
    except (ManifestError, FileNotFoundError) as e:
        print(f"popjax predict: error: {e}", file=sys.stderr)
        return 2
    print(f"scored {result['scored']} videos -> {result['out']}")
    if result["failed"]:
        print(f"{result['failed']} rows rejected: see {result['errors']}", file=sys.stderr)
        return 1
    return 0


def _explain(args) -> int:
    from popjax.data.manifest import ManifestError, read_manifest
    from popjax.data.video import VideoError
    from popjax.explain.explanation import Explainer, write_explanation
    from popjax.trained import TrainedModel

    video, headline = args.video, args.headline
    try:
        if args.manifest:
            rows = {r.id: r for r in read_manifest(args.manifest, require_labels=False).rows}
            if args.row not in rows:
                raise ManifestError(f"{args.manifest}: no accepted row with id {args.row!r}")
            video, headline = rows[args.row].video, rows[args.row].headline
        trained = TrainedModel.load(args.workdir, dtype=args.dtype)
        explanation, frames = Explainer(trained, args.target, args.normalization).explain_file(video, headline or "")
    except (ManifestError, FileNotFoundError) as e:
        print(f"popjax explain: error: {e}", file=sys.stderr)
        return 2
    except VideoError as e:
        print(f"popjax explain: error ({e.reason}): {e}", file=sys.stderr)
        return 1
    paths = write_explanation(explanation, frames, args.out)
    print(f"P(popular) = {explanation['score']:.3f} -> {', '.join(paths.values())}")
    return 0


def _add_decoder(p) -> None:
    p.add_argument("--decoder", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="video decoding: cpu (ffmpeg), cuda (NVDEC on an NVIDIA GPU; a video it cannot decode "
                        "falls back to the CPU, reported), auto (cuda when JAX runs on an NVIDIA GPU)")


def _add_dtype(p) -> None:
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "auto"],
                   help="backbone compute dtype (default: the one the model's features were extracted with)")


def _add_distributed(p) -> None:
    g = p.add_argument_group("several processes (one per host; every process runs the same command and "
                             "--out must be a directory that all of them see)")
    g.add_argument("--coordinator-address", help="host:port of process 0")
    g.add_argument("--num-processes", type=int, help="how many processes take part")
    g.add_argument("--process-id", type=int, help="this process's index, 0 .. num-processes - 1")
    g.add_argument("--distributed", action="store_true",
                   help="join a cluster JAX detects by itself (Cloud TPU, SLURM, ...) instead")


def _check_distributed(parser, args) -> None:
    given = [args.coordinator_address is not None, args.num_processes is not None, args.process_id is not None]
    if any(given) and not all(given):
        parser.error("--coordinator-address, --num-processes and --process-id go together")
    if all(given):
        if args.num_processes < 1:
            parser.error(f"--num-processes must be >= 1, got {args.num_processes}")
        if not 0 <= args.process_id < args.num_processes:
            parser.error(f"--process-id must be in 0 .. {args.num_processes - 1}, got {args.process_id}")
        if args.distributed:
            parser.error("--distributed detects the cluster itself: give it alone, or the three flags")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="popjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert-weights", help="ImageNet ResNet50 weights (Keras .h5 / torchvision) -> popjax")
    p.add_argument("--format", required=True, choices=["keras", "torchvision"])
    p.add_argument("--input", required=True, help=".h5 (Keras applications, full or notop) or .pth/.safetensors")
    p.add_argument("--out", required=True, help="new directory for the orbax checkpoint")
    p.set_defaults(func=_convert_weights)

    p = sub.add_parser("frames", help="the frames the model sees (paper: 18 over the first 6 s), as PNGs + frames.json")
    p.add_argument("video")
    p.add_argument("--out", required=True, help="directory for frame_00.png.. and frames.json")
    p.add_argument("--num-frames", type=int, default=18)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--size", type=int, default=224)
    _add_decoder(p)
    p.set_defaults(func=_frames)

    p = sub.add_parser("demo", help="write the SYNTHETIC demo corpus (planted visual cue and cue words)")
    p.add_argument("--out", required=True)
    p.add_argument("--videos", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)

    p = sub.add_parser("extract", help="manifest -> features dataset (TFDS array_record); resumable")
    p.add_argument("--manifest", required=True, help="CSV or JSONL: id, video, headline, views, followers")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", help="a `popjax convert-weights` directory (default: random ResNet50, said so)")
    p.add_argument("--batch-size", type=int, default=0,
                   help="frames per backbone call (default 0: 32 on a CPU, 256 per device on a GPU/TPU)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                   help="backbone compute dtype (auto: bfloat16 where the hardware computes it, else float32)")
    p.add_argument("--glove", help="a glove.*.txt file (default: the packaged glove.6B 50-d vectors)")
    p.add_argument("--num-frames", type=int, default=18)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--max-words", type=int, default=32)
    p.add_argument("--image-size", type=int, default=0,
                   help="frames' side at the backbone's input, pixels (default 0: the backbone's own, 224)")
    p.add_argument("--workers", type=int, default=0, help="decoding threads (0: one per usable core)")
    _add_decoder(p)
    p.add_argument("--shard-videos", type=int, default=64,
                   help="manifest rows per dataset shard (the unit of work per process and of resume)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random backbone when no --weights")
    p.add_argument("--quiet", action="store_true")
    _add_distributed(p)
    p.set_defaults(func=_extract)

    p = sub.add_parser("explain", help="figure.png, headline.html and explanation.json for one video + headline")
    p.add_argument("--workdir", required=True, help="a trained train.py work directory")
    p.add_argument("--video", help="a video file")
    p.add_argument("--headline", help="its headline")
    p.add_argument("--manifest", help="instead of --video/--headline: a manifest ...")
    p.add_argument("--row", help="... and the id of the row to explain")
    p.add_argument("--out", required=True)
    p.add_argument("--target", default="popular", choices=["popular", "unpopular"])
    p.add_argument("--normalization", default="frame", choices=["frame", "video"],
                   help="Grad-CAM maps normalised per frame (paper) or jointly over the video")
    _add_dtype(p)
    p.set_defaults(func=_explain)

    p = sub.add_parser("predict", help="score unpublished videos with a trained model -> CSV of P(popular)")
    p.add_argument("--workdir", required=True, help="a train.py work directory (its checkpoints/best)")
    p.add_argument("--manifest", required=True, help="CSV or JSONL: id, video, headline (views, followers unused)")
    p.add_argument("--out", required=True, help="CSV: id, p_popular, predicted_label; bad rows in OUT.errors.jsonl")
    p.add_argument("--batch-size", type=int, default=32, help="videos per model call (and frames per backbone call)")
    _add_dtype(p)
    p.add_argument("--quiet", action="store_true")
    _add_decoder(p)
    p.set_defaults(func=_predict)
    return parser


# Accepted ranges of numeric arguments, checked before anything runs: (low, high), None = unbounded.
# --num-frames: the frames sampled per video (paper: 18); more than a few hundred only repeats decoded frames.
RANGES = {"num_frames": (1, 1024), "seconds": (1e-3, 3600.0), "size": (1, 4096), "max_words": (1, 4096),
          "workers": (0, None), "batch_size": (0, None), "videos": (1, None)}


def _check_ranges(parser, args) -> None:
    for field, (low, high) in RANGES.items():
        value = getattr(args, field, None)
        if value is None:
            continue
        if field == "batch_size" and args.command == "predict":
            low = 1
        if value < low or (high is not None and value > high):
            flag = "--" + field.replace("_", "-")
            parser.error(f"{flag} = {value}: expected {low} .. {high}" if high is not None
                         else f"{flag} = {value}: expected >= {low}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_ranges(parser, args)
    if args.command == "explain" and not (args.video or (args.manifest and args.row)):
        parser.error("explain needs --video (and --headline) or --manifest and --row")
    if args.command == "extract":
        _check_distributed(parser, args)
        if args.shard_videos < 1:
            parser.error(f"--shard-videos must be >= 1, got {args.shard_videos}")
        from popjax.backbone import image_size_problem

        if image_size_problem(args.image_size):
            parser.error(f"--image-size = {args.image_size}: {image_size_problem(args.image_size)}")
    from popjax import parallel, runtime

    runtime.configure(retain_memory=True)   # one CPU device per core, compilation cache, memory kept
    if getattr(args, "distributed", False) or getattr(args, "coordinator_address", None):
        parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

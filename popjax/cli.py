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
    from popjax.data.video import VideoError, sample_frames, write_frames

    try:
        sampled = sample_frames(args.video, num_frames=args.num_frames, seconds=args.seconds, size=args.size)
    except VideoError as e:
        print(f"popjax frames: error ({e.reason}): {e}", file=sys.stderr)
        return 1
    write_frames(sampled, args.out)
    info, ts = sampled.info, sampled.timestamps
    print(f"{args.video}: {len(ts)} frames at {ts[0]:.3f}..{ts[-1]:.3f} s of {info['sampled_seconds']:.3f} s "
          f"({info['width']}x{info['height']}, {info['codec']}) -> {args.out}")
    return 0


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
    p.set_defaults(func=_frames)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="popjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert-weights", help="ImageNet ResNet50 weights (Keras .h5 / torchvision) -> popjax")
    p.add_argument("--format", required=True, choices=["keras", "torchvision"])
    p.add_argument("--input", required=True, help=".h5 (Keras applications, full or notop) or .pth/.safetensors")
    p.add_argument("--out", required=True, help="new directory for the orbax checkpoint")
    p.set_defaults(func=_convert_weights)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""`sdakd data build`: parser and handler."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def cmd_data_build(args: argparse.Namespace) -> None:
    from sdakd.data.build import BUNDLED_MAX_SIDE, build_dataset

    if args.images is None and args.max_side is None:
        print(f"the bundled demo photos are stored with their longest side capped at {BUNDLED_MAX_SIDE} px "
              "(--max-side changes it)")
    manifest = build_dataset(
        args.out, images_dir=args.images, val_count=args.val, test_count=args.test, max_side=args.max_side,
        min_side=args.min_side, jobs=args.jobs, progress=sys.stderr, report=print,
    )
    print(f"wrote {manifest}")


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    build = data_sub.add_parser(
        "build", help="decode an image folder once into a memory-mapped dataset (pixel files + manifest.json)"
    )
    build.add_argument("--images", type=Path, help="image folder; default: the photos scikit-image ships")
    build.add_argument("--out", type=Path, required=True, help="output folder for pixel files and manifest.json")
    build.add_argument("--min-side", type=int, default=64, help="refuse images smaller than this (the GT crop)")
    build.add_argument("--max-side", type=int, default=None,
                       help="downscale images whose longest side exceeds this (default: full resolution; the "
                            "bundled photos: 512); every change is printed")
    build.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                       help="decoding processes (default: all cores)")
    build.add_argument("--val", type=int, default=2, help="validation images (searches and ASHA decide on them)")
    build.add_argument("--test", type=int, default=None,
                       help="held-out test images, the only ones reports read (default 2; the bundled photos: "
                            "scikit-image's six held-out photos)")
    build.set_defaults(handler=cmd_data_build)

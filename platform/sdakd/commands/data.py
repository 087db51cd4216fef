"""`sdakd data build`: parser and handler."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_data_build(args: argparse.Namespace) -> None:
    from sdakd.data import build_dataset

    manifest = build_dataset(args.out, images_dir=args.images, val_count=args.val, test_count=args.test,
                             min_side=args.min_side)
    print(f"wrote {manifest}")


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    build = data_sub.add_parser("build", help="write Parquet shards + manifest from an image folder")
    build.add_argument("--images", type=Path, help="image folder; default: the photos scikit-image ships")
    build.add_argument("--out", type=Path, required=True, help="output folder for shards and manifest.json")
    build.add_argument("--min-side", type=int, default=64, help="refuse images smaller than this (the GT crop)")
    build.add_argument("--val", type=int, default=2, help="validation images (searches and ASHA decide on them)")
    build.add_argument("--test", type=int, default=None,
                       help="held-out test images, the only ones reports read (default 2; the bundled photos: "
                            "scikit-image's six held-out photos)")
    build.set_defaults(handler=cmd_data_build)

"""What several command families share: the config arguments and their loading."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdakd.errors import SdakdError


def config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="a preset shipped in the package (see `sdakd list`), e.g. tiny")
    parser.add_argument("--config", type=Path, help="a YAML config (it may name its own `preset:`)")
    overrides_arg(parser, "dotted-path override, repeatable: --set stages.s3.iters=200 --set method=dcd")


def overrides_arg(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """--set PATH=VALUE, repeatable, into args.overrides."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE", help=help_text)


def load_from_args(args: argparse.Namespace):
    from sdakd.config.load import load_config

    if not args.preset and not args.config:
        raise SdakdError("name a config: --preset NAME or --config FILE (presets: see `sdakd list`)")
    return load_config(args.preset, args.config, args.overrides)

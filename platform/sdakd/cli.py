"""`sdakd` command line: thin argument parsing over the pipeline and the adapters.

Bad input prints one `error:` line set (no traceback) and exits 2; a run that failed (diverged) prints one too and
exits 1, as `search` and `ablate` do when a trial or cell failed. Each command family has its own module in
`sdakd.commands` (and `sdakd.ship.commands`); this one assembles them.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sdakd.errors import SdakdError, bounded, without_torch_advice


def build_parser() -> argparse.ArgumentParser:
    from sdakd.commands.data import add_data_commands
    from sdakd.commands.experiments import add_experiment_commands
    from sdakd.commands.runs import add_run_commands
    from sdakd.ship.commands import add_ship_commands  # upscale, export, register

    parser = argparse.ArgumentParser(prog="sdakd", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    tracking = argparse.ArgumentParser(add_help=False)
    tracking.add_argument(
        "--tracking-uri", help="MLflow store (sqlite:///PATH or http(s)://HOST:PORT); "
        "default: env SDAKD_TRACKING_URI, else the config's run.tracking_uri, else sqlite:///<cwd>/mlflow.db",
    )
    add_run_commands(sub)
    add_data_commands(sub)
    add_experiment_commands(sub, tracking)
    add_ship_commands(sub, tracking)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.handler(args) or 0
    except SdakdError as err:
        print(f"error: {bounded(without_torch_advice(str(err)))}", file=sys.stderr)
        return getattr(err, "exit_code", 2)  # 1: a run that failed (sdakd.engine.loop.Diverged)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

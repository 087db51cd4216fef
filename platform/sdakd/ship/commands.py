"""The `sdakd upscale`, `export` and `register` subcommands (cli.py adds them): parsers and thin handlers."""

from __future__ import annotations

import argparse
from pathlib import Path

from typing import Any

from sdakd.errors import SdakdError
from sdakd.ship import ARCHS


def parse_params(items: list[str]) -> dict[str, Any]:
    """`num_block=6 act_type=prelu` -> {"num_block": 6, "act_type": "prelu"} (integers where they parse)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SdakdError(f"--arch-param {item!r}: expected NAME=VALUE, e.g. num_block=23")
        params[key] = int(value) if value.lstrip("-").isdigit() else value
    return params


def _network_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=ARCHS, help="for an official .pth: its architecture (default: read off "
                        "the weights' shapes)")  # fmt: skip
    parser.add_argument("--arch-param", dest="arch_params", action="append", default=[], metavar="NAME=VALUE",
                        help="for an official .pth: a size overriding the inferred one, e.g. num_block=23")


def cmd_upscale(args: argparse.Namespace) -> int:
    from sdakd.ship.upscale import upscale_files

    failed = upscale_files(
        args.inputs, args.model, args.out, args.tile, args.overlap, args.device, args.bf16, args.arch,
        parse_params(args.arch_params),
    )
    print(f"wrote {args.out}: {'all images' if not failed else f'{len(failed)} image(s) failed (see above)'}")
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> None:
    from sdakd.ship.export import OPSET, export_model

    differences = export_model(args.model, args.format, args.out, args.arch, parse_params(args.arch_params))
    for name, diff in differences.items():
        print(f"  {name}: max |{args.format} - PyTorch| = {diff:.2e}")
    opset = f", opset {OPSET}" if args.format == "onnx" else ""
    print(f"wrote {args.out} ({args.format}{opset}; input 'input' N x 3 x H x W float32 RGB in [0,1] -> 'output')")


def cmd_register(args: argparse.Namespace) -> None:
    from sdakd.tracking.model import register_student
    from sdakd.tracking.store import resolve_uri

    version = register_student(resolve_uri(args.tracking_uri), args.run_id, args.name, args.run_folder)
    print(f"registered {args.name} version {version.version} from run {args.run_id} ({version.source}); "
          f"load it with mlflow.pyfunc.load_model('models:/{args.name}/{version.version}')")


def add_ship_commands(sub: argparse._SubParsersAction, tracking: argparse.ArgumentParser) -> None:
    upscale = sub.add_parser("upscale", help="upscale image files or folders with a student, teacher or export")
    upscale.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    upscale.add_argument("--model", type=Path, required=True,
                         help="run folder, student.pt, training checkpoint, official .pth or .onnx (not .pt2: "
                         "loading one can run code it carries)")
    upscale.add_argument("--out", type=Path, required=True, help="output folder (same names and formats)")
    upscale.add_argument("--tile", type=int, default=512, help="largest tile side in input pixels; 0: whole image")
    upscale.add_argument("--overlap", type=int, default=32,
                         help="input pixels each tile reads past its edges (exact when >= 2x the receptive radius)")
    upscale.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N")
    upscale.add_argument("--bf16", action="store_true", help="bfloat16 autocast (PyTorch networks on CUDA)")
    _network_args(upscale)
    upscale.set_defaults(handler=cmd_upscale)

    export = sub.add_parser("export", help="export a student or teacher-family network to ONNX or torch.export")
    export.add_argument("model", type=Path, help="run folder, student.pt, training checkpoint or official .pth")
    export.add_argument("--format", required=True, help="onnx (needs the deploy extra) or exported-program")
    export.add_argument("--out", type=Path, required=True, help="the file to write (.onnx or .pt2)")
    _network_args(export)
    export.set_defaults(handler=cmd_export)

    register = sub.add_parser("register", parents=[tracking],
                              help="register a run's logged student model in the MLflow model registry")
    register.add_argument("run_id", help="the MLflow run (a trained grid cell or search trial)")
    register.add_argument("--name", required=True, help="the registered model's name (a new version if it exists)")
    register.add_argument("--run-folder", type=Path,
                          help="log the student from this run folder first, where the run has no model yet")
    register.set_defaults(handler=cmd_register)

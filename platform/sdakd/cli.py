"""`sdakd` command line: thin argument parsing over the pipeline and the adapters.

Bad input prints one `error:` line set (no traceback) and exits 2; a run that failed (diverged) prints one too and
exits 1, as `search` and `ablate` do when a trial or cell failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from sdakd.errors import SdakdError, without_torch_advice

Handler = Callable[[argparse.Namespace], int | None]


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="a preset shipped in the package (see `sdakd list`), e.g. tiny")
    parser.add_argument("--config", type=Path, help="a YAML config (it may name its own `preset:`)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
        help="dotted-path override, repeatable: --set stages.s3.iters=200 --set method=dcd",
    )


def _load(args: argparse.Namespace):
    from sdakd.config.load import load_config

    if not args.preset and not args.config:
        raise SdakdError("name a config: --preset NAME or --config FILE (presets: see `sdakd list`)")
    return load_config(args.preset, args.config, args.overrides)


def cmd_train(args: argparse.Namespace) -> None:
    cfg = _load(args)
    from sdakd.experiment import out_dir_for
    from sdakd.pipeline import train

    resume = True if args.resume == "auto" else (Path(args.resume) if args.resume else None)
    if args.workers is None:
        metrics = train(cfg, resume=resume, warm_start=args.warm_start).metrics
    else:
        from sdakd.ray_adapter.train import train_distributed

        metrics = train_distributed(
            cfg, workers=args.workers, gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
            resume=resume, warm_start=args.warm_start,
        ).return_value
    out = out_dir_for(cfg)
    s, r = metrics["student"], metrics["references"]
    print(f"\nwrote {out}/metrics.json, {out}/student.pt, {out}/checkpoints/")
    print(
        f"student PSNR-Y {s['psnr_y']:.2f} dB  SSIM-Y {s['ssim_y']:.4f}  vs teacher {s.get('psnr_y_vs_teacher', float('nan')):.2f} dB"
        f" | teacher {r.get('teacher_psnr_y', float('nan')):.2f} dB | bicubic {r['bicubic_psnr_y']:.2f} dB"
    )


def cmd_teacher(args: argparse.Namespace) -> None:
    if args.teacher_command == "import":
        return cmd_teacher_import(args)
    cfg = _load(args)
    import re

    from sdakd.data.dataset import ensure_dataset
    from sdakd.engine.device import resolve_device
    from sdakd.evaluate.validator import Validator
    from sdakd.teacher.cache import build_teacher
    from sdakd.tracking.plots import sample_grid

    device = resolve_device(cfg.run.device)
    data = ensure_dataset(cfg)
    teacher = build_teacher(cfg, data, device)
    validator = Validator(cfg, data, teacher, device)
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", teacher.identity).strip("-")
    samples = sample_grid(validator, Path(cfg.run.out_dir or Path("runs") / "teacher") / f"{slug}.png")
    sources = {"source": teacher.source, "d_source": teacher.d_source}
    print(json.dumps({"teacher": teacher.identity} | sources | validator.references(), indent=2))
    print(f"wrote {samples} (LR | bicubic | teacher | GT)")


def cmd_teacher_import(args: argparse.Namespace) -> None:
    import torch

    from sdakd.models.ncnn import import_ncnn

    state, spec = import_ncnn(args.param, args.bin, args.arch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": state}, args.out)
    params = sum(v.numel() for v in state.values())
    sizes = " ".join(f"{k}={v}" for k, v in spec.items())
    print(f"wrote {args.out}: {args.arch} {sizes}, {params:,} parameters (key params_ema; official key names)")


def cmd_data_build(args: argparse.Namespace) -> None:
    from sdakd.data import build_dataset

    manifest = build_dataset(args.out, images_dir=args.images, val_count=args.val, test_count=args.test,
                             min_side=args.min_side)
    print(f"wrote {manifest}")


def cmd_eval(args: argparse.Namespace) -> None:
    from sdakd.evaluate.checkpoint import evaluate_checkpoint

    print(json.dumps(evaluate_checkpoint(args.checkpoint, args.overrides), indent=2))


def cmd_search(args: argparse.Namespace) -> int:
    from sdakd.ray_adapter.search import run_named
    from sdakd.search.summary import print_summary

    summary = run_named(
        args.space, samples=args.samples, resume=args.resume, overrides=args.overrides, tracking_uri=args.tracking_uri
    )
    print_summary(summary)
    errored = [t for t in summary.trials if t["error"]]
    for trial in errored:
        print(f"trial {trial['trial_id']} failed: {trial['error']}", file=sys.stderr)
    return 1 if errored else 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from sdakd.ray_adapter.ablate import ablate

    return 0 if ablate(args.grid, seeds=args.seeds, force=args.force, uri=args.tracking_uri) else 1


def _names_a_search_space(name: str) -> bool:
    """A name only search_spaces/ has, or a YAML file holding a space's `parameters:` and no grid's `cells:`."""
    from sdakd.config.load import read_yaml
    from sdakd.config.project import project_names

    if name in project_names("ablations") or name in project_names("search_spaces"):
        return name not in project_names("ablations")
    data = read_yaml(name, kind="YAML file") if Path(name).is_file() else {}
    return "parameters" in data and "cells" not in data


def cmd_report(args: argparse.Namespace) -> None:
    if args.search or _names_a_search_space(args.grid):
        from sdakd.search.summary import best_table, load_named_space, load_summary, search_folder

        space, base = load_named_space(args.grid, args.overrides)
        print(best_table(load_summary(space, search_folder(space, base))))
        return
    from sdakd.ablate.report import report

    report(args.grid, uri=args.tracking_uri)


def cmd_ui(args: argparse.Namespace) -> int | None:
    from sdakd.tracking.store import SERVER_SCHEMES, check_port_free, check_reachable, resolve_uri, serve_ui

    uri = resolve_uri(args.tracking_uri)
    if uri.startswith(SERVER_SCHEMES):
        check_reachable(uri)
        print(f"{uri} is a tracking server with its own UI: open it in a browser")
        return
    check_port_free(args.port)
    print(f"MLflow UI for {uri} on http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    return serve_ui(uri, args.port)


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must look like 0,1,2 (got {text!r})") from None


def cmd_list(args: argparse.Namespace) -> None:
    from sdakd.config.load import preset_names
    from sdakd.config.project import project_names
    from sdakd.methods import METHODS

    print("presets:  " + ", ".join(preset_names()))
    print("methods:  " + ", ".join(METHODS.names()))
    print("search spaces:  " + (", ".join(project_names("search_spaces")) or "none"))
    print("ablation grids: " + (", ".join(project_names("ablations")) or "none"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdakd", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a student through all stages of its method")
    _config_args(train)
    train.add_argument(
        "--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
        help="resume from CHECKPOINT, or from the run folder's last checkpoint when no path is given",
    )
    train.add_argument(
        "--warm-start", action="store_true",
        help="with --resume: start from a checkpoint trained under other settings (same networks); "
        "metrics.json records it",
    )
    train.add_argument(
        "--workers", type=int, help="train on N Ray Train workers (DDP; data.batch_size is per worker)",
    )
    train.add_argument("--gpus-per-worker", type=float, default=0, help="with --workers (default 0: CPU)")
    train.add_argument("--cpus-per-worker", type=float, default=1, help="with --workers; also each one's threads")
    train.set_defaults(handler=cmd_train)

    teacher = sub.add_parser(
        "teacher", help="load or pretrain (and cache) the config's teacher; print its scores, draw its samples"
    )
    _config_args(teacher)
    teacher.set_defaults(handler=cmd_teacher)
    teacher_sub = teacher.add_subparsers(dest="teacher_command")
    ncnn = teacher_sub.add_parser("import", help="convert a Real-ESRGAN ncnn model (.param + .bin) to a .pth")
    ncnn.add_argument("param", type=Path, help="the ncnn layer list (.param)")
    ncnn.add_argument("bin", type=Path, help="the ncnn weights (.bin)")
    ncnn.add_argument("--arch", required=True, choices=["rrdbnet", "srvgg_compact"])
    ncnn.add_argument("--out", type=Path, required=True, help="the .pth to write ({'params_ema': state dict})")

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

    evaluate = sub.add_parser("eval", help="evaluate a trained student (run folder or checkpoint)")
    evaluate.add_argument("checkpoint", type=Path, help="run folder, its checkpoints/last.pt, or student.pt")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    evaluate.set_defaults(handler=cmd_eval)

    tracking = argparse.ArgumentParser(add_help=False)
    tracking.add_argument(
        "--tracking-uri", help="MLflow store (sqlite:///PATH or http(s)://HOST:PORT); "
        "default: env SDAKD_TRACKING_URI, else the config's run.tracking_uri, else sqlite:///<cwd>/mlflow.db",
    )
    search = sub.add_parser(
        "search", parents=[tracking], help="Ray Tune + Optuna over a named search space (search_spaces/NAME.yaml)"
    )
    search.add_argument("space", help="a search space name (e.g. smoke, sdakd_core, pareto) or a YAML path")
    search.add_argument("--samples", type=int, help="number of trials (default: the space's `samples`)")
    search.add_argument("--resume", action="store_true", help="continue a search whose driver was stopped")
    search.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
        help="dotted-path override of the base config, repeatable (run.out_dir: the search folder)",
    )
    search.set_defaults(handler=cmd_search)

    ablate = sub.add_parser("ablate", parents=[tracking], help="run a named ablation grid (ablations/NAME.yaml)")
    ablate.add_argument("grid", help="a grid name (see `sdakd list`) or a YAML path")
    ablate.add_argument("--seeds", type=_seeds, help="comma-separated seeds, replacing the grid's (e.g. 0,1,2)")
    ablate.add_argument("--force", action="store_true", help="rerun cells that already finished")
    ablate.set_defaults(handler=cmd_ablate)

    report = sub.add_parser(
        "report", parents=[tracking], help="a grid's table (mean ± 95 %% CI) and Pareto plot, or a search's best trials"
    )
    report.add_argument("grid", help="a grid or search-space name (see `sdakd list`) or a YAML path")
    report.add_argument("--search", action="store_true", help="NAME is a search space (where a grid has the same name)")
    report.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
        help="for a search: the --set values it ran with that move its folder (run.out_dir)",
    )
    report.set_defaults(handler=cmd_report)

    ui = sub.add_parser("ui", parents=[tracking], help="the MLflow UI on the tracking store, at 127.0.0.1")
    ui.add_argument("--port", type=int, default=5000, help="must be free; SIGTERM or Ctrl-C stop the server whole")
    ui.set_defaults(handler=cmd_ui)

    listing = sub.add_parser("list", help="presets, methods, search spaces and ablation grids")
    listing.set_defaults(handler=cmd_list)
    from sdakd.ship.commands import add_ship_commands  # upscale, export, register

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
        print(f"error: {without_torch_advice(str(err))}", file=sys.stderr)
        return getattr(err, "exit_code", 2)  # 1: a run that failed (sdakd.engine.loop.Diverged)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

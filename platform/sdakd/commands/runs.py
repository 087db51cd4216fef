"""`sdakd train`, `teacher` (and `teacher import`) and `eval`: parsers and thin handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdakd.commands.common import config_args, load_from_args, overrides_arg


def cmd_train(args: argparse.Namespace) -> None:
    cfg = load_from_args(args)
    from sdakd.experiment import out_dir_for
    from sdakd.pipeline import train

    resume = True if args.resume == "auto" else (Path(args.resume) if args.resume else None)
    if args.spread and args.workers is None:
        from sdakd.errors import SdakdError

        raise SdakdError("--spread places Ray Train workers on separate nodes: it needs --workers N (N >= 2)")
    if args.workers is None:
        metrics = train(cfg, resume=resume, warm_start=args.warm_start).metrics
    else:
        from sdakd.ray_adapter.train import train_distributed

        metrics = train_distributed(
            cfg, workers=args.workers, gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
            spread=args.spread, resume=resume, warm_start=args.warm_start,
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
    cfg = load_from_args(args)
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

    from sdakd.files import output_file
    from sdakd.models.ncnn import import_ncnn

    with output_file(args.out, (args.param, args.bin)) as partial:
        state, spec = import_ncnn(args.param, args.bin, args.arch)
        torch.save({"params_ema": state}, partial)
    params = sum(v.numel() for v in state.values())
    sizes = " ".join(f"{k}={v}" for k, v in spec.items())
    print(f"wrote {args.out}: {args.arch} {sizes}, {params:,} parameters (key params_ema; official key names)")


def cmd_eval(args: argparse.Namespace) -> None:
    from sdakd.evaluate.checkpoint import evaluate_checkpoint

    print(json.dumps(evaluate_checkpoint(args.checkpoint, args.overrides), indent=2))


def add_run_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a student through all stages of its method")
    config_args(train)
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
    train.add_argument(
        "--spread", action="store_true",
        help="with --workers: each worker on a node of its own (DDP between nodes); waits for enough nodes",
    )
    train.set_defaults(handler=cmd_train)

    teacher = sub.add_parser(
        "teacher", help="load or pretrain (and cache) the config's teacher; print its scores, draw its samples"
    )
    config_args(teacher)
    teacher.set_defaults(handler=cmd_teacher)
    teacher_sub = teacher.add_subparsers(dest="teacher_command")
    ncnn = teacher_sub.add_parser("import", help="convert a Real-ESRGAN ncnn model (.param + .bin) to a .pth")
    ncnn.add_argument("param", type=Path, help="the ncnn layer list (.param)")
    ncnn.add_argument("bin", type=Path, help="the ncnn weights (.bin)")
    ncnn.add_argument("--arch", required=True, choices=["rrdbnet", "srvgg_compact"])
    ncnn.add_argument("--out", type=Path, required=True, help="the .pth to write ({'params_ema': state dict})")

    evaluate = sub.add_parser("eval", help="evaluate a trained student (run folder or checkpoint)")
    evaluate.add_argument("checkpoint", type=Path, help="run folder, its checkpoints/last.pt, or student.pt")
    overrides_arg(evaluate)
    evaluate.set_defaults(handler=cmd_eval)

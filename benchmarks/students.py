"""Students: what each width costs and, for the tiny family, what it scores after training.

For widths 1, 1/2, 1/4, 1/8 of the teacher, in the tiny family (srvgg_compact, tiny preset) and the Real-ESRGAN x4
family (RRDBNet 64/23/32): params, MACs at a 64x64 LR input, CPU latency (every network timed on the same input,
interleaved in rounds) and speed-up over the teacher. The tiny students are also trained with the CLI, sharing one
cache so the teacher is pretrained once; stages are shortened to fit the 5-minute budget (STAGES, or --stages).

`--shipped` measures the shipped form instead (no training): each network exported to ONNX (`sdakd export`'s
exporter) under onnxruntime on the CPU next to PyTorch eager, at 1 and 2 threads, at 64x64 and 256x256 LR.

    python -m benchmarks.students [--rounds N] [--shipped]
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as `python benchmarks/students.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import command_line, interleaved, median_ci, quiet_cpu, ratios
from sdakd import cli
from sdakd.config.load import load_config
from sdakd.evaluate import count_params, macs
from sdakd.models.from_config import sr_generator
from sdakd.data.dataset import ensure_dataset
from sdakd.teacher.cache import pretrain_key

WIDTHS = (1.0, 0.5, 0.25, 0.125)
LR_SHAPE = (1, 3, 64, 64)
PAPER_SPEEDUP = 4.35
STAGES = (100, 20, 20)  # iterations of s1, s2, s3 that fit the 5-minute budget here; the tiny preset's: 150 150 200
OUT = Path("runs/bench-students")
SIDES_SHIPPED, THREADS_SHIPPED = (64, 256), (1, 2)
FAMILIES = {"tiny": ("tiny", 5), "Real-ESRGAN x4 (RRDBNet 64/23/32)": ("realesrgan-x4", 1)}  # preset, rounds x


# ---------------------------------------------------------------- cost


def networks(preset: str) -> dict[str, torch.nn.Module]:
    """The teacher, then each width (a width-1 student of the teacher's depth IS the teacher), in eval mode."""
    cfg = load_config(preset)
    nets = {"teacher": sr_generator(cfg)}
    for width in WIDTHS:
        if width < 1 or cfg.student.num_block not in (None, cfg.teacher.num_block):
            nets[f"width {width:g}"] = sr_generator(cfg, width, cfg.student.num_block)
    return {name: net.eval() for name, net in nets.items()}


def costs(preset: str, rounds: int) -> list[dict]:
    """One row per network (`networks`): params, MACs, latency, speed-up over the teacher."""
    nets = networks(preset)
    x = torch.rand(LR_SHAPE)
    with torch.inference_mode():
        times = interleaved({name: (lambda net=net: net(x)) for name, net in nets.items()}, rounds, warmup=1)
    rows = []
    for name, net in nets.items():
        speedup, low, high = median_ci(ratios(times.cpu, "teacher", name))
        rows.append({
            "network": name, "params": count_params(net), "gmacs": macs(net, LR_SHAPE) / 1e9,
            "wall_ms": statistics.median(times.wall[name]) * 1e3, "cpu_ms": statistics.median(times.cpu[name]) * 1e3,
            "speedup": speedup, "speedup_ci": (low, high),
            "wall_speedup": statistics.median(ratios(times.wall, "teacher", name)),
        })  # fmt: skip
    return rows


def print_costs(family: str, rows: list[dict], rounds: int) -> None:
    print(f"\n{family}: 1x3x64x64 LR input, {rounds} interleaved rounds; speed-up = teacher time / network time")
    print("| network | params | GMACs | CPU-time latency ms | wall latency ms | speed-up (CPU time, 95% CI) "
          "| speed-up (wall) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        low, high = r["speedup_ci"]
        print(f"| {r['network']} | {r['params']:,} | {r['gmacs']:.2f} | {r['cpu_ms']:.1f} | {r['wall_ms']:.1f} | "
              f"{r['speedup']:.2f}x ({low:.2f}-{high:.2f}) | {r['wall_speedup']:.2f}x |")


# ---------------------------------------------------------------- training (tiny family)


def sdakd(args: list[str], log: Path) -> float:
    """`sdakd <args>` through the CLI's own entry point, output to `log`; seconds taken."""
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with log.open("w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli.main(args)
    if code:
        raise RuntimeError(f"`sdakd {' '.join(args)}` exited with {code}; see {log}")
    return time.perf_counter() - began


def train_args(width: str, stages: tuple[int, int, int]) -> list[str]:
    args = ["train", "--preset", "tiny", "--set", f"student.width={width}"]
    for name, iters in zip(("s1", "s2", "s3"), stages):
        args += ["--set", f"stages.{name}.iters={iters}"]
    return args + ["--set", f"run.out_dir={OUT}/w{width}"]


def train_width(width: float, stages: tuple[int, int, int]) -> dict:
    args = train_args(f"{width:g}", stages)
    out = OUT / f"w{width:g}"
    seconds = sdakd(args, out / "train.log")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"width": width, "stage_iters": stages, "seconds": seconds} | metrics


def ensure_teacher() -> float | None:
    """Seconds spent pretraining the tiny teacher into the shared cache; None when it was there already."""
    cfg = load_config("tiny")
    if (cfg.run.cache_dir / "teachers" / f"{pretrain_key(cfg, ensure_dataset(cfg))}.pt").exists():
        return None
    return sdakd(["teacher", "--preset", "tiny"], OUT / "teacher.log")


def print_training(teacher_s: float | None, runs: list[dict], tiny_costs: list[dict], point: dict | None) -> None:
    ref = runs[0]["references"]
    teacher = "from the cache" if teacher_s is None else f"pretrained first, in {teacher_s:.0f} s"
    print(f"\ntiny students trained (stage iterations s1, s2, s3 = {runs[0]['stage_iters']}); teacher {teacher}")
    print(f"teacher PSNR-Y {ref['teacher_psnr_y']:.2f} dB, bicubic {ref['bicubic_psnr_y']:.2f} dB (val, vs GT)")
    print("| width | speed-up (CPU time) | PSNR-Y vs GT dB | minus teacher dB | PSNR-Y vs teacher dB | SSIM-Y "
          "| train s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    speedups = {r["network"]: r["speedup"] for r in tiny_costs}
    for run in runs:
        s, speedup = run["student"], speedups[f"width {run['width']:g}"]
        print(f"| {run['width']:g} | {speedup:.2f}x | {s['psnr_y']:.2f} | "
              f"{s['psnr_y'] - ref['teacher_psnr_y']:+.2f} | {s['psnr_y_vs_teacher']:.2f} | {s['ssim_y']:.4f} | "
              f"{run['seconds']:.0f} |")
    if point is not None:
        run = next(r for r in runs if point["network"] == f"width {r['width']:g}")
        print(f"at the paper's {PAPER_SPEEDUP}x point, {point['network']} ({point['speedup']:.2f}x) scores "
              f"{run['student']['psnr_y'] - ref['teacher_psnr_y']:+.2f} dB PSNR-Y against the teacher's")


def paper_point(family: str, rows: list[dict]) -> dict | None:
    """The widest student (least speed-up) that reaches the paper's speed-up, if any."""
    reached = [r for r in rows if r["network"] != "teacher" and r["speedup"] >= PAPER_SPEEDUP]
    first = min(reached, key=lambda r: r["speedup"], default=None)
    where = f"first reached at {first['network']} ({first['speedup']:.2f}x)" if first else "not reached by any width"
    print(f"{family}: the paper's {PAPER_SPEEDUP}x speed-up is {where}")
    return first


# ---------------------------------------------------------------- the shipped form (--shipped)


def eager(net: torch.nn.Module, x: torch.Tensor, threads: int) -> None:
    torch.set_num_threads(threads)
    with torch.inference_mode():
        net(x)


def shipped(nets: dict[str, torch.nn.Module], side: int, rounds: int, folder: Path) -> list[dict]:
    """Per network, wall ms of PyTorch eager and of its ONNX export under onnxruntime (CPU), each at 1 and 2
    threads, on one 1x3xSIDExSIDE LR input: all variants of all networks interleaved, one call each per round.
    ONNX files are written into `folder` once (named by network) and reused."""
    from sdakd.ship.export import write_onnx
    from sdakd.ship.runtimes import onnx_upscaler

    x = torch.rand(1, 3, side, side)
    variants = {}
    for name, net in nets.items():
        path = folder / f"{name.replace(' ', '-')}.onnx"
        if not path.exists():
            write_onnx(net, path, {})
        for threads in THREADS_SHIPPED:
            session = onnx_upscaler(path, torch.device("cpu"), threads)
            variants[(name, "eager", threads)] = lambda net=net, t=threads: eager(net, x, t)
            variants[(name, "onnxruntime", threads)] = lambda s=session: s.forward(x)
    times = interleaved(variants, rounds, warmup=1)
    quiet_cpu()
    rows = {}
    for (name, runtime, threads), wall in times.wall.items():
        row = rows.setdefault(name, {"network": name, "side": side})
        row[f"{runtime} {threads}t"] = statistics.median(wall) * 1e3
        if runtime == "onnxruntime":  # per round: the two calls saw about the same machine load
            per_round = ratios(times.wall, (name, "eager", threads), (name, runtime, threads))
            row[f"gain {threads}t"] = statistics.median(per_round)
    return list(rows.values())


def print_shipped(family: str, rows: list[dict], rounds: int) -> None:
    columns = [f"{r} {t}t" for t in THREADS_SHIPPED for r in ("eager", "onnxruntime")]
    print(f"\n{family}: wall ms per 1x3xSxS LR input, median of {rounds} interleaved rounds; onnxruntime gain = "
          "eager time / onnxruntime time (per round); speed-up = teacher / network, both under onnxruntime 1t")
    print("| network | LR side | " + " | ".join(f"{c} ms" for c in columns)
          + " | " + " | ".join(f"onnxruntime gain {t}t" for t in THREADS_SHIPPED) + " | speed-up (ORT 1t) |")
    print("|---|---:|" + "---:|" * (len(columns) + len(THREADS_SHIPPED) + 1))
    for r in rows:
        teacher = next(t for t in rows if t["network"] == "teacher" and t["side"] == r["side"])
        print(f"| {r['network']} | {r['side']} | " + " | ".join(f"{r[c]:.1f}" for c in columns) + " | "
              + " | ".join(f"{r[f'gain {t}t']:.2f}x" for t in THREADS_SHIPPED)
              + f" | {teacher['onnxruntime 1t'] / r['onnxruntime 1t']:.2f}x |")


def main_shipped(rounds: int) -> None:
    began = time.perf_counter()
    for family, (preset, factor) in FAMILIES.items():
        folder = OUT / "onnx" / preset
        folder.mkdir(parents=True, exist_ok=True)
        nets = networks(preset)
        rows = [row for side in SIDES_SHIPPED for row in shipped(nets, side, rounds * factor, folder)]
        print_shipped(family, rows, rounds * factor)
    print(f"\nONNX files in {OUT / 'onnx'}; total {time.perf_counter() - began:.0f} s")


def main() -> None:
    parser = command_line(__doc__, rounds=3)  # for the RRDBNet family; the tiny one gets 5x as many
    parser.add_argument("--stages", type=int, nargs=3, default=STAGES, metavar=("S1", "S2", "S3"),
                        help="training iterations per stage (the tiny preset's: 150 150 200, about 19 min here)")
    parser.add_argument("--shipped", action="store_true", help="only the shipped form's latency (ONNX, 2 sides)")
    args = parser.parse_args()
    quiet_cpu()
    if args.shipped:
        return main_shipped(args.rounds)
    began = time.perf_counter()
    teacher_s = ensure_teacher()
    # Students train two at a time in processes forked from this one (no second torch import: ~20 s here each),
    # while this process times the networks: every latency round still interleaves all widths.
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork")) as pool:
        jobs = [pool.submit(train_width, width, tuple(args.stages)) for width in WIDTHS]
        tables, points = {}, {}
        for family, (preset, factor) in FAMILIES.items():
            tables[family] = costs(preset, args.rounds * factor)
            print_costs(family, tables[family], args.rounds * factor)
            points[family] = paper_point(family, tables[family])
        runs = [job.result() for job in jobs]
    print_training(teacher_s, runs, tables["tiny"], points["tiny"])
    print(f"\ncommand per width W: sdakd {' '.join(train_args('W', tuple(args.stages)))}")
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()

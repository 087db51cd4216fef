"""Loader: patches/s out of the dataset store (crop + degrade: StepBatches[step]) vs patches/s the step consumes.

For the tiny preset (GT 48, bicubic) and realesrgan-x4 (GT 256, second_order), in-process (0 workers) and with 2
loader workers (batch_loader), each timed in rounds interleaved with the stage-3 training step of that preset.
The realesrgan-x4 step cannot run at batch 12 here: it is measured at batch 1 and counted per patch (an upper
bound on its per-patch cost), and its FLOPs per patch say how fast a GPU would have to be to outrun the loader.
Target: loader >= 5x what the step consumes.

Then the second-order degradation at GT 256, batch 12, both paths in this process on CPU tensors, interleaved:
the loader path (StepBatches[step]: crop, draw, degrade per sample with FFT blur and libjpeg) vs the device path
(StepBatches.clean(step): crop and draw; then degrade_on_device: batched, one FFT blur on CPU, torch JPEG) and
the clean crops alone (what a loader process still does on the device path). `--degrade-only` runs just this part.

    python -m benchmarks.loader [--rounds N] [--degrade-only]
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

if __package__ in (None, ""):  # run as `python benchmarks/loader.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import PAPER_SCALE, command_line, experiment, interleaved, median_ci, quiet_cpu, ratios
from sdakd.config.load import load_config
from sdakd.data import StepBatches, batch_loader
from sdakd.data.dataset import ensure_dataset, train_batches
from sdakd.data.degrade_device import degrade_on_device

TARGET = 5.0
WORKERS = 2


@dataclass(frozen=True)
class Setting:
    preset: str
    overrides: tuple[str, ...] = ()
    step_batch: int | None = None  # time the step at this batch size (None: the preset's)
    block: int = 8  # loader batches per timed block


SETTINGS = {
    "tiny (GT 48, bicubic, batch 8)": Setting("tiny", block=32),
    "realesrgan-x4 (GT 256, second_order, batch 12)": Setting("realesrgan-x4", PAPER_SCALE, step_batch=1, block=4),
}


def in_process(batches: StepBatches, start: int, count: int) -> None:
    for step in range(start, start + count):
        batches[step]


def from_workers(batches: StepBatches, start: int, count: int) -> float:
    """Seconds for `count` batches from WORKERS loader processes, timed from the first batch (start-up excluded)."""
    loader = iter(batch_loader(batches, start, count + 1, num_workers=WORKERS))
    next(loader)
    began = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - began


def measure(name: str, setting: Setting, rounds: int) -> None:
    loader_batch = load_config(setting.preset).data.batch_size
    step_batch = setting.step_batch or loader_batch
    exp = experiment(setting.preset, [*setting.overrides, f"data.batch_size={step_batch}"])
    began = time.perf_counter()
    batches = train_batches(exp.cfg, exp.data, loader_batch)
    decode_s = time.perf_counter() - began
    engine = exp.engine
    s3 = next(s for s in engine.stages if s.name == "s3")
    step_input = engine.batches(0)
    with FlopCounterMode(display=False) as counter:
        engine.train_step(s3, step_input)  # also the step's warm-up
    gflop = counter.get_total_flops() / step_batch / 1e9
    starts = itertools.count(0, setting.block + 1)  # every block reads new steps
    workers = f"{WORKERS} workers"
    times = interleaved(
        {
            "step": lambda: engine.train_step(s3, step_input),
            "0 workers": lambda: in_process(batches, next(starts), setting.block),
            workers: lambda: from_workers(batches, next(starts), setting.block),
        },
        rounds,
        warmup=1,
    )
    patches = setting.block * loader_batch
    print(f"\n{name}: batches ready in {decode_s:.2f} s (once per process); {rounds} rounds")
    print(f"  step (stage 3, batch {step_batch}): {_rate(step_batch, times.wall['step'])} patches/s, "
          f"{gflop:.2f} GFLOP per patch (G and D steps, forward + backward)")
    best = 0.0
    for variant in ("0 workers", workers):
        # per round: loader patches/s over step patches/s
        ratio, low, high = median_ci([patches / step_batch * r for r in ratios(times.wall, "step", variant)])
        best = max(best, patches / statistics.median(times.wall[variant]))
        print(f"  loader, {variant}: {_rate(patches, times.wall[variant])} patches/s = {ratio:.1f}x the step "
              f"(95% CI {low:.1f}-{high:.1f}; target >= {TARGET:g}x: {'met' if ratio >= TARGET else 'NOT met'})")
    print(f"  the best loader rate here stays >= {TARGET:g}x only for a step slower than {best / TARGET:.1f} patches/s "
          f"= {best / TARGET * gflop / 1e3:.3f} TFLOP/s sustained")


def paper_scale_batches() -> tuple[int, StepBatches]:
    """realesrgan-x4's training batches (GT 256, second_order, batch 12) over the bundled photos, and its scale."""
    cfg = load_config("realesrgan-x4", overrides=list(PAPER_SCALE))
    return cfg.data.scale, train_batches(cfg, ensure_dataset(cfg), cfg.data.batch_size)


def degrade_paths(rounds: int) -> None:
    scale, batches = paper_scale_batches()
    cpu = torch.device("cpu")
    steps = {name: itertools.count() for name in ("loader", "device", "clean")}  # round r: step r in each
    times = interleaved(
        {
            "loader": lambda: batches[next(steps["loader"])],
            "device": lambda: degrade_on_device(batches.clean(next(steps["device"])), scale, cpu),
            "clean": lambda: batches.clean(next(steps["clean"])),
        },
        rounds,
        warmup=1,
    )
    patches = batches.batch_size
    ratio, low, high = median_ci(ratios(times.wall, "loader", "device"))
    print(f"\nsecond_order at GT {batches.gt_size}, batch {patches}, in process, {torch.get_num_threads()} thread(s), "
          f"{rounds} rounds (patches/s, median over rounds):")
    print(f"  loader path (per sample, FFT blur, libjpeg): {_rate(patches, times.wall['loader'])}")
    print(f"  device path on CPU tensors (batched: one FFT blur, torch JPEG): {_rate(patches, times.wall['device'])} "
          f"= {ratio:.2f}x the loader path (95% CI {low:.2f}-{high:.2f})")
    print(f"  clean crops + draws alone (the loader's share on the device path): {_rate(patches, times.wall['clean'])}")


def _rate(patches: int, seconds: list[float]) -> str:
    return f"{patches / statistics.median(seconds):.2f}"


def main() -> None:
    parser = command_line(__doc__, rounds=4)
    parser.add_argument("--degrade-only", action="store_true", help="only the loader vs device path comparison")
    args = parser.parse_args()
    quiet_cpu()
    if not args.degrade_only:
        for name, setting in SETTINGS.items():
            measure(name, setting, args.rounds)
    degrade_paths(args.rounds)


if __name__ == "__main__":
    main()

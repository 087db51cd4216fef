"""What the benchmarks share: a quiet CPU setup, an experiment with a throwaway teacher, interleaved timing.

The benchmark machine is shared with other jobs, so no absolute time means much: every figure is a ratio of
variants timed side by side, one step of each per round (order alternating), summarised by medians.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from sdakd.config.load import load_config
from sdakd.experiment import Experiment, Placement, build_experiment

# On 2 loaded cores two intra-op threads stall each other: a tiny training step measured ~20x slower than with one.
THREADS = 1
# A teacher that is never trained: timing needs the teacher's shape, not its skill.
UNTRAINED_TEACHER = ("teacher.pretrain.iters=0", "teacher.pretrain.d_iters=0")
# realesrgan-x4 without its weight files (an untrained teacher instead), and a one-crop validation set.
PAPER_SCALE = ("teacher.weights=null", "teacher.d_weights=null", "data.val_max_side=64", "run.eval_max_images=1")


def command_line(doc: str, rounds: int) -> argparse.ArgumentParser:
    """A benchmark's options: --rounds (more rounds, tighter medians, a longer run), and whatever it adds."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=rounds, help=f"timed rounds (default {rounds})")
    return parser


def quiet_cpu(threads: int = THREADS) -> None:
    torch.set_num_threads(threads)
    logging.getLogger("sdakd").setLevel(logging.ERROR)  # the random-init VGG / teacher-D warnings


def experiment(preset: str, overrides: Sequence[str] = (), device: str = "cpu") -> Experiment:
    """The preset's experiment with an untrained teacher (cached under its own key, so it costs one build)."""
    cfg = load_config(preset, overrides=[*UNTRAINED_TEACHER, f"run.device={device}", *overrides])
    return build_experiment(cfg, Placement(writer=False))


@dataclass
class Timings:
    """Seconds per call of each variant: wall clock, and this process's CPU time (which the other jobs on the
    machine inflate far less than the wall clock: waiting for a core is not counted)."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)


def interleaved(variants: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 2) -> Timings:
    """One call of each variant per round, the order reversed every other round; warm-up rounds not kept.

    A variant that returns a float has timed itself (say, without a start-up): that is its wall time."""
    names = list(variants)
    times = Timings({name: [] for name in names}, {name: [] for name in names})
    for r in range(warmup + rounds):
        for name in names if r % 2 == 0 else reversed(names):
            wall, cpu = time.perf_counter(), time.process_time()
            own = variants[name]()
            if r >= warmup:
                times.wall[name].append(own if isinstance(own, float) else time.perf_counter() - wall)
                times.cpu[name].append(time.process_time() - cpu)
    return times


def ratios(samples: Mapping[str, list[float]], num: str, den: str) -> list[float]:
    """num/den per round: the two calls of a round saw about the same machine load."""
    return [a / b for a, b in zip(samples[num], samples[den], strict=True)]


def median_ci(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median and its bootstrap 95% interval."""
    rng = random.Random(seed)
    boot = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return statistics.median(values), boot[int(0.025 * resamples)], boot[int(0.975 * resamples)]


def best_of(fn: Callable[[], object], number: int = 20, repeat: int = 5) -> float:
    """Seconds per call, the fastest of `repeat` batches: for small pieces, the least disturbed by other jobs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def ms(seconds: Sequence[float]) -> str:
    """Median and interquartile range in milliseconds."""
    if len(seconds) < 2:
        return f"{statistics.median(seconds) * 1e3:.1f} ms (n={len(seconds)})"
    q1, q2, q3 = statistics.quantiles(seconds, n=4)
    return f"{q2 * 1e3:.1f} ms (IQR {q1 * 1e3:.1f}-{q3 * 1e3:.1f}, n={len(seconds)})"

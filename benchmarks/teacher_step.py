"""Where a stage-3 step of the real-teacher preset (x4plus-cpu) spends its time: the batch (second-order
degradation), the teacher's forward (with its feature taps), the student's G step, the student D's step.

    python -m benchmarks.teacher_step [--rounds N] [--preset x4plus-cpu] [--set PATH=VALUE ...]

Each round takes one fresh batch and times each piece once through the engine's own code: the teacher's outputs
are computed first and handed to the engine's step, which then runs once as G only and once as G + D (D = the
difference). The teacher is the configured one (Real-ESRGAN x4plus from the registry package by default).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as `python benchmarks/teacher_step.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import command_line, quiet_cpu
from sdakd.config.load import load_config
from sdakd.experiment import Placement, build_experiment


def main() -> None:
    parser = command_line(__doc__, rounds=15)
    parser.add_argument("--preset", default="x4plus-cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    args = parser.parse_args()
    quiet_cpu()
    cfg = load_config(args.preset, overrides=["run.device=cpu", "run.eval_max_images=1", *args.overrides])
    exp = build_experiment(cfg, Placement(writer=False))
    engine, method = exp.engine, exp.method
    s3 = engine.stages[-1]
    g_only = dataclasses.replace(s3, d_loss={})
    batches = engine.batches
    pieces: dict[str, list[float]] = {k: [] for k in ("batch", "teacher forward", "student G step", "student D step")}
    warmup = 2
    for r in range(warmup + args.rounds):
        t0 = time.perf_counter()
        batch = batches(1000 + r)
        t1 = time.perf_counter()
        step = method.step(batch)
        step.teacher_sr  # the frozen teacher, with its taps: computed once per step
        t2 = time.perf_counter()
        method.step = lambda _batch, step=step: step  # the engine's step reuses these teacher outputs
        engine.train_step(g_only, batch)
        t3 = time.perf_counter()
        step = method.step(batch)
        step.__dict__.pop("sr", None), step.__dict__.pop("student_features", None)  # a fresh student forward
        engine.train_step(s3, batch)
        t4 = time.perf_counter()
        del method.step
        if r >= warmup:
            for name, seconds in zip(pieces, (t1 - t0, t2 - t1, t3 - t2, (t4 - t3) - (t3 - t2))):
                pieces[name].append(seconds)
    total = sum(statistics.median(v) for v in pieces.values())
    teacher = exp.teacher.identity if exp.teacher else "none"
    print(f"{args.preset}: teacher {teacher}, student width {cfg.student.width} x {cfg.student.num_block} blocks, "
          f"batch {cfg.data.batch_size} x {cfg.data.gt_size}px GT ({cfg.data.degradation}), 1 thread, "
          f"{args.rounds} rounds")
    for name, values in pieces.items():
        median = statistics.median(values)
        print(f"  {name:<16} {median * 1e3:7.1f} ms  ({100 * median / total:4.1f} %)")
    print(f"  {'step':<16} {total * 1e3:7.1f} ms  -> {600 * total / 60:.1f} min for 600 steps")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()

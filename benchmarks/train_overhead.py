"""Ray Train's cost per training step: the same run through one Ray Train worker and through the local path.

    python benchmarks/train_overhead.py            # ~4 min on a busy 2-core machine
    python benchmarks/train_overhead.py --smoke    # a few steps, to check that it runs

Same preset, models, batch, steps and thread count on both paths, run side by side in lock-step: the local run
(in its own process, as `sdakd train` is) and the Ray worker take turns, one step each, so both see the same load;
on a shared machine, runs one after the other differ by 20 % and more between themselves. A step's time runs from
getting the turn to the step's log call. Per stage, the median of the plain steps (after warm-up) is the step
time; the steps that follow a checkpoint give its extra cost (for Ray: the report and the upload).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

from sdakd.config.load import load_config, validate
from sdakd.ray_adapter.train import train_distributed
from sdakd.engine import Callbacks
from sdakd.data.dataset import ensure_dataset, train_batches
from sdakd.pipeline import train
from sdakd.teacher.cache import build_teacher

RAY_WORKER_NICENESS = 15  # what os.nice(0) says in a Ray Train worker


class TakeTurns(Callbacks):
    """Lock-step with the other run through a counter in `turn_file` (even: side 0, odd: side 1): after each step,
    hand the turn over and wait for it to come back. Writes each step's span, per stage, to `record` at stage ends
    (so it works in a Ray worker)."""

    def __init__(self, turn_file: Path, side: int, total: int, record: Path) -> None:
        self.turn_file, self.side, self.total, self.record = turn_file, side, total, record
        self.created = time.time()
        self.start_up: float | None = None
        self.resumed: float | None = None
        self.spans: dict[str, list[float]] = {}

    def on_log(self, stage, global_step, metrics) -> None:
        now = time.time()
        if self.resumed is None:  # the first step ran without the turn (untimed); the other side may still hold it
            self.start_up = now - self.created
            self._wait()
        self.spans.setdefault(stage.name, []).append(now - self.resumed if self.resumed else float("nan"))
        count = int(self.turn_file.read_text())
        tmp = self.turn_file.with_suffix(f".{self.side}")
        tmp.write_text(str(count + 1))
        tmp.replace(self.turn_file)
        if global_step < self.total:
            self._wait()
            self.resumed = time.time()

    def on_stage_end(self, stage, global_step, metrics) -> None:
        self.resumed = time.time()  # the next stage's first step starts now, after the evaluation
        record = {"threads": torch.get_num_threads(), "nice": os.nice(0), "start_up": self.start_up}
        self.record.write_text(json.dumps(record | {"spans": self.spans}))

    def _wait(self) -> None:
        while int(self.turn_file.read_text()) % 2 != self.side:
            time.sleep(0.005)


def local_run(config: dict[str, Any], threads: int, *turns: Any) -> None:
    """The local path in a fresh process (its start-up: setting up the experiment, not spawning the process).

    At a Ray worker's niceness: on a busy machine a nice-15 process gets a smaller share of the CPU than a nice-0
    one, and the comparison is of the two code paths, not of the scheduler's priorities."""
    torch.set_num_threads(threads)
    os.nice(RAY_WORKER_NICENESS - os.nice(0))
    train(validate(config), callbacks=[TakeTurns(*turns)])


def step_times(path: Path, warmup: int, every: int) -> dict[str, Any]:
    """Per stage: the median plain step, its fastest decile (least touched by the machine's other load), and the
    mean extra time of a step that follows a checkpoint."""
    record = json.loads(path.read_text())
    stages = {}
    for name, spans in record["spans"].items():
        # spans[j] covers step j + 1 of the stage and, when step j made a checkpoint (every `every` steps), that too
        timed = dict(list(enumerate(spans))[max(warmup, 1):])
        plain = [t for j, t in timed.items() if j % every]
        extra = statistics.fmean(t for j, t in timed.items() if not j % every) - statistics.median(plain)
        stages[name] = {
            "step": statistics.median(plain), "fast": statistics.quantiles(plain, n=10)[0], "checkpoint_extra": extra
        }
    return {"threads": record["threads"], "nice": record["nice"], "start_up": record["start_up"], "stages": stages}


def typical_step(times: dict[str, Any], key: str = "step") -> float:
    """The mean over stages of their median (or fastest-decile) step; the stages are equally long here."""
    return statistics.fmean(stage[key] for stage in times["stages"].values())


def describe(name: str, times: dict[str, Any]) -> str:
    per_stage = " ".join(f"{stage} {1e3 * v['step']:5.1f}" for stage, v in times["stages"].items())
    extra = statistics.fmean(v["checkpoint_extra"] for v in times["stages"].values())
    return (
        f"{name:>9}: median step {per_stage} ms (mean {1e3 * typical_step(times):5.1f};"
        f" fastest decile {1e3 * typical_step(times, 'fast'):5.1f})"
        f" | checkpoint {1e3 * extra:+7.1f} ms | {times['threads']} thread(s), nice {times['nice']}"
        f" | start-up {times['start_up']:5.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=90, help="steps per run, split evenly over the three stages")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out at the start of each stage")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="per run (a Ray worker gets as many CPUs); on a busy 2-core machine 2 threads ran 15x slower than 1",
    )
    parser.add_argument("--smoke", action="store_true", help="9 steps, 1 of warm-up")
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    args = parser.parse_args()
    steps, warmup = (9, 1) if args.smoke else (args.steps, args.warmup)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sdakd-overhead-"))
    torch.set_num_threads(args.threads)
    per_stage = steps // 3
    every = max(2, min(5, per_stage // 3))  # frequent, so that their cost shows; leaves plain steps in each stage

    def config(name: str):
        return load_config("tiny", overrides=[
            *(f"stages.s{i}.iters={per_stage}" for i in (1, 2, 3)),
            "teacher.pretrain.iters=50", "teacher.pretrain.d_iters=10",  # any teacher does for timing
            "data.val_max_side=64", "run.latency_repeats=1", "run.log_every=1", f"run.checkpoint_every={every}",
            f"run.cache_dir={workdir / 'cache'}", f"run.out_dir={workdir / name}", f"run.storage_path={workdir}/ray",
        ])

    cfg = config("prepare")
    data = ensure_dataset(cfg)
    build_teacher(cfg, data, torch.device("cpu"))  # once, outside every measured run
    started = time.time()
    ray.init(address="local", num_cpus=max(4, 2 * args.threads), include_dashboard=False)
    print(f"ray.init: {time.time() - started:.1f} s", flush=True)

    turn_file, total = workdir / "turn", 3 * per_stage
    turn_file.write_text("0")
    records = {name: workdir / f"{name}.json" for name in ("local", "ray")}
    local = multiprocessing.get_context("spawn").Process(
        target=local_run, args=(config("local").to_dict(), args.threads, turn_file, 0, total, records["local"])
    )
    local.start()
    train_distributed(  # on a GPU machine both runs use the GPU (the local one by run.device=auto)
        config("ray"), workers=1, cpus_per_worker=args.threads, gpus_per_worker=int(torch.cuda.is_available()),
        callbacks=[TakeTurns(turn_file, 1, total, records["ray"])],
    )
    local.join()
    ray.shutdown()

    times = {name: step_times(path, warmup, every) for name, path in records.items()}
    print(f"\n{total} steps each ({warmup} of warm-up per stage), a checkpoint every {every} steps")
    for name, t in times.items():
        print(describe(name, t))
    batches = train_batches(cfg, data, cfg.data.batch_size)
    started = time.perf_counter()
    for step in range(20):
        batches[step]
    batch_ms = 1e3 * (time.perf_counter() - started) / 20
    print(f"\nbatch assembly (StepBatches, in the training process): {batch_ms:.1f} ms/step")
    fast = typical_step(times["ray"], "fast") / typical_step(times["local"], "fast") - 1
    print(f"Ray Train step overhead on the fastest decile: {100 * fast:+.1f} %")
    overhead = typical_step(times["ray"]) / typical_step(times["local"]) - 1
    print(f"Ray Train step overhead on the median step: {100 * overhead:+.1f} %")


if __name__ == "__main__":
    main()

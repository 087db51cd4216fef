"""GPU: the Real-ESRGAN-scale stage-3 training step of SDAKD and DCD in fp32 eager, bf16 autocast, bf16 autocast +
channels_last, and that + torch.compile: ms/step, peak GPU memory, the speed-up over fp32 eager, GPU busy.

Teacher RRDBNet 64/23/32 (untrained: speed does not depend on the weights), student width 1/4, student D width 1/4,
batch 12, GT 256, the realesrgan-x4 preset's losses (its perceptual VGG19 is random-init without a weights file).
The batch is fixed on the device (the loader is benchmarks.gpu_degrade's). Variants run one after another, each in
a fresh experiment, so torch.cuda.max_memory_allocated is that variant's peak (models + activations). "GPU busy" is
NVML's utilisation (the share of time a kernel ran) sampled during the timed steps: below 100% the host, not the
GPU, sets the pace (it needs nvidia-ml-py, which the GPU image has). SDAKD_GPU_CHECK_DRY=1 without a GPU: the same
at toy scale on the CPU (benchmarks.gpu_common).

    python -m benchmarks.gpu_step [--steps N] [--compile yes|no|only] [--methods sdakd dcd]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import torch

if __package__ in (None, ""):  # run as `python benchmarks/gpu_step.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_common import (check_device, check_overrides, compile_options, device_name, record, recorded,
                                   synchronize)
from benchmarks.harness import PAPER_SCALE, experiment
from sdakd.experiment import compile_nets

FP32 = ("optim.amp=false", "optim.channels_last=false")
VARIANTS = {  # name: (config overrides, torch.compile)
    "fp32 eager": (FP32, False),
    "bf16 autocast": (("optim.amp=true", "optim.channels_last=false"), False),
    "bf16 autocast + channels_last": (("optim.amp=true", "optim.channels_last=true"), False),
    "bf16 autocast + channels_last + compile": (("optim.amp=true", "optim.channels_last=true"), True),
}
COMPILE = {"yes": (False, True), "no": (False,), "only": (True,)}  # --compile: which variants run


@contextlib.contextmanager
def gpu_busy(samples: list[float], device: torch.device, every_s: float = 0.05) -> Iterator[None]:
    """NVML's utilisation of this GPU, sampled into `samples` while the block runs (nothing without nvidia-ml-py)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device() if device.type == "cuda" else 0)
    except Exception:  # noqa: BLE001 - no NVML or no GPU: the column says n/a
        yield
        return
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every_s):
            samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        done.set()
        sampler.join()


def step_figures(method: str, overrides: tuple[str, ...], compiled: bool, steps: int, warmup: int,
                 device: torch.device) -> dict[str, float | str | None]:
    """ms per stage-3 step, peak GiB allocated and the GPU-busy share, for one method and variant."""
    exp = experiment("realesrgan-x4", [*PAPER_SCALE, f"method={method}", *overrides, *check_overrides(device)],
                     device=device.type)
    engine = exp.engine
    if compiled:
        compile_nets(exp, **compile_options(device))
    s3 = next(s for s in engine.stages if s.name == "s3")
    batch = {k: v.to(device) for k, v in engine.batches(0).items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        engine.train_step(s3, batch)
    synchronize(device)
    busy: list[float] = []
    began = time.perf_counter()
    with gpu_busy(busy, device):
        for _ in range(steps):
            engine.train_step(s3, batch)
        synchronize(device)
    ms = (time.perf_counter() - began) / steps * 1e3
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"ms_per_step": ms, "peak_gib": peak, "gpu_busy_percent": statistics.mean(busy) if busy else None,
            "batch": exp.cfg.data.batch_size, "gt": exp.cfg.data.gt_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation happens here)")
    parser.add_argument("--compile", choices=COMPILE, default="yes",
                        help="the torch.compile variant too (yes), not (no: minutes less), or only it (only)")
    parser.add_argument("--methods", nargs="+", default=["sdakd", "dcd"])
    args = parser.parse_args()
    device = check_device()
    variants = {name: v for name, v in VARIANTS.items() if v[1] in COMPILE[args.compile]}
    print(f"device: {device_name(device)}, torch {torch.__version__}")
    print("\n| method | stage-3 step | ms/step | speed-up over fp32 eager | peak GiB | GPU busy |")
    print("|---|---|---:|---:|---:|---:|")
    for method in args.methods:
        figures = {}
        for name, (overrides, compiled) in variants.items():
            f = figures[name] = step_figures(method, overrides, compiled, args.steps, args.warmup, device)
            # fp32 eager's figure: this run's, or the eager phase's when this is the compiled phase alone
            base = figures.get("fp32 eager", recorded("train-step").get(f"{method}: fp32 eager", {}))
            f["speedup_over_fp32_eager"] = base["ms_per_step"] / f["ms_per_step"] if base else None
            print(f"| {method} | {name} | {f['ms_per_step']:.1f} | "
                  + (f"{f['speedup_over_fp32_eager']:.2f}x" if base else "n/a")
                  + f" | {f['peak_gib'] or float('nan'):.2f} | "
                  + (f"{f['gpu_busy_percent']:.0f}%" if f["gpu_busy_percent"] is not None else "n/a") + " |",
                  flush=True)
            record("train-step", {f"{method}: {name}": f})
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

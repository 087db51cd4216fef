"""GPU: the Real-ESRGAN-scale SDAKD stage-3 step in fp32 eager vs bf16 + channels_last (+ torch.compile), and the
inference latency of the teacher and of each student width at a 256x256 LR input.

Teacher RRDBNet 64/23/32 (untrained: speed does not depend on the weights), student width 1/4, student D width 1/4,
batch 12, GT 256, the realesrgan-x4 preset's losses (its perceptual VGG19 is random-init without a weights file).
The batch is fixed on the device (the loader is the Loader benchmark's). Variants run one after another, each in a
fresh experiment, so torch.cuda.max_memory_allocated is that variant's peak (models + activations). The second-order
degradation on the GPU (data.degrade_on: device) is timed apart, with its share of each variant's step
(degrade time / (degrade + step time)). "GPU busy" is NVML's utilisation (the share of time a kernel ran) sampled
during the timed steps: below 100% the host, not the GPU, sets the pace (it needs nvidia-ml-py: the `gpu` extra).

    python -m benchmarks.gpu_step [--steps N] [--compile yes|no|only]
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
from torch import nn

if __package__ in (None, ""):  # run as `python benchmarks/gpu_step.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import PAPER_SCALE, experiment
from benchmarks.loader import paper_scale_batches
from benchmarks.students import WIDTHS
from sdakd.config.load import load_config
from sdakd.data.degrade_device import degrade_on_device
from sdakd.evaluate import latency_ms
from sdakd.experiment import compile_nets
from sdakd.models.from_config import sr_generator

BF16 = ("optim.amp=true", "optim.channels_last=true")
VARIANTS = {  # name: (config overrides, torch.compile)
    "fp32 eager": (("optim.amp=false", "optim.channels_last=false"), False),
    "bf16 + channels_last": (BF16, False),
    "bf16 + channels_last + compile": (BF16, True),
}
INFERENCE = {  # name: (bf16 + channels_last, torch.compile)
    "fp32": (False, False),
    "bf16 + channels_last": (True, False),
    "bf16 + channels_last + compile": (True, True),
}
LR_SIDE = 256
COMPILE = {"yes": (False, True), "no": (False,), "only": (True,)}  # --compile: which variants run


def require_cuda() -> None:
    if not torch.cuda.is_available():
        sys.exit(
            "benchmarks.gpu_step: no CUDA GPU is visible (torch.cuda.is_available() is False), so nothing was "
            "measured. Run `python -m benchmarks.gpu_step` on a machine with a GPU."
        )


@contextlib.contextmanager
def gpu_busy(samples: list[float], every_s: float = 0.05) -> Iterator[None]:
    """NVML's utilisation of this GPU, sampled into `samples` while the block runs (nothing without nvidia-ml-py)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML: the column says n/a
        yield
        return
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
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


def train_rate(overrides: tuple[str, ...], compiled: bool, steps: int, warmup: int) -> tuple[float, float, str]:
    """Stage-3 steps/s, peak GiB allocated and the GPU-busy share, for one variant."""
    exp = experiment("realesrgan-x4", [*PAPER_SCALE, *overrides], device="cuda")
    engine = exp.engine
    if compiled:
        compile_nets(exp)
    s3 = next(s for s in engine.stages if s.name == "s3")
    batch = {k: v.cuda() for k, v in engine.batches(0).items()}
    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        engine.train_step(s3, batch)
    torch.cuda.synchronize()
    busy: list[float] = []
    began = time.perf_counter()
    with gpu_busy(busy):
        for _ in range(steps):
            engine.train_step(s3, batch)
        torch.cuda.synchronize()
    rate = steps / (time.perf_counter() - began)
    return rate, torch.cuda.max_memory_allocated() / 2**30, f"{statistics.mean(busy):.0f}%" if busy else "n/a"


def degrade_seconds(steps: int, warmup: int) -> float:
    """Seconds per batch of the second-order degradation on the GPU (data.degrade_on: device), from clean crops in
    pinned memory as loader processes serve them."""
    scale, batches = paper_scale_batches()
    clean = [batches.clean(step) for step in range(warmup + steps)]
    for batch in clean:
        batch["hr"] = batch["hr"].pin_memory()
    for batch in clean[:warmup]:
        degrade_on_device(batch, scale, torch.device("cuda"))
    torch.cuda.synchronize()
    began = time.perf_counter()
    for batch in clean[warmup:]:
        degrade_on_device(batch, scale, torch.device("cuda"))
    torch.cuda.synchronize()
    return (time.perf_counter() - began) / steps


def inference_ms(net: nn.Module, bf16: bool, compiled: bool) -> float:
    net = net.cuda().eval()
    if bf16:
        net = net.to(torch.bfloat16, memory_format=torch.channels_last)
    if compiled:
        net.compile()
    return latency_ms(net, (1, 3, LR_SIDE, LR_SIDE), warmup=5, repeats=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation happens here)")
    parser.add_argument("--compile", choices=COMPILE, default="yes",
                        help="the torch.compile variants too (yes), not (no: minutes less), or only them (only)")
    args = parser.parse_args()
    variants = {name: v for name, v in VARIANTS.items() if v[1] in COMPILE[args.compile]}
    inference = {name: v for name, v in INFERENCE.items() if v[1] in COMPILE[args.compile]}
    require_cuda()
    cfg = load_config("realesrgan-x4")
    batch, gt = cfg.data.batch_size, cfg.data.gt_size
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"\n| stage-3 step (batch {batch}, GT {gt}) | steps/s | patches/s | peak memory GiB | GPU busy |")
    print("|---|---:|---:|---:|---:|")
    rates = {}
    for name, (overrides, compiled) in variants.items():
        rate, peak, busy = train_rate(overrides, compiled, args.steps, args.warmup)
        rates[name] = rate
        print(f"| {name} | {rate:.2f} | {rate * batch:.1f} | {peak:.1f} | {busy} |", flush=True)
        gc.collect()
        torch.cuda.empty_cache()
    degrade_s = degrade_seconds(args.steps, args.warmup)
    print(f"\n| second_order degraded on the GPU (batch {batch}, GT {gt}) | ms/batch | patches/s | "
          + " | ".join(f"share of a {name} step" for name in rates) + " |\n|---|---:|---:|" + "---:|" * len(rates))
    shares = [f"{degrade_s / (degrade_s + 1 / rate):.1%}" for rate in rates.values()]
    print(f"| device path | {degrade_s * 1e3:.1f} | {batch / degrade_s:.0f} | " + " | ".join(shares) + " |", flush=True)
    print(f"\n| inference ms, 1x3x{LR_SIDE}x{LR_SIDE} LR | " + " | ".join(inference) + " |")
    print("|---|" + "---:|" * len(inference))
    nets = {"teacher (RRDBNet 64/23/32)": 1.0} | {f"student width {w:g}": w for w in WIDTHS if w < 1}
    for name, width in nets.items():
        times = [inference_ms(sr_generator(cfg, width), bf16, compiled) for bf16, compiled in inference.values()]
        print(f"| {name} | " + " | ".join(f"{t:.1f}" for t in times) + " |", flush=True)


if __name__ == "__main__":
    main()

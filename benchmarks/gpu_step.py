"""GPU: the Real-ESRGAN-scale SDAKD stage-3 step in fp32 eager vs bf16 + channels_last (+ torch.compile), and the
student's inference latency at a 256x256 LR input.

Teacher RRDBNet 64/23/32 (untrained: speed does not depend on the weights), student width 1/4, student D width 1/4,
batch 12, GT 256, the realesrgan-x4 preset's losses (its perceptual VGG19 is random-init without a weights file).
The batch is fixed on the device (the loader is the Loader benchmark's). Variants run one after another, each in a
fresh experiment, so torch.cuda.max_memory_allocated is that variant's peak (models + activations).

    python -m benchmarks.gpu_step [--steps N]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as `python benchmarks/gpu_step.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import PAPER_SCALE, experiment
from sdakd.config.load import load_config
from sdakd.evaluate import latency_ms
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


def require_cuda() -> None:
    if not torch.cuda.is_available():
        sys.exit(
            "benchmarks.gpu_step: no CUDA GPU is visible (torch.cuda.is_available() is False), so nothing was "
            "measured. Run `python -m benchmarks.gpu_step` on a machine with a GPU."
        )


def train_rate(overrides: tuple[str, ...], compiled: bool, steps: int, warmup: int) -> tuple[float, float]:
    """Stage-3 steps/s and peak GiB allocated, for one variant."""
    exp = experiment("realesrgan-x4", [*PAPER_SCALE, *overrides], device="cuda")
    engine = exp.engine
    if compiled:
        for net in (*exp.method.nets.values(), exp.teacher.g, exp.method.perceptual):
            if net is not None:
                net.compile()
    s3 = next(s for s in engine.stages if s.name == "s3")
    batch = {k: v.cuda() for k, v in engine.batches(0).items()}
    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        engine.train_step(s3, batch)
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        engine.train_step(s3, batch)
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - began), torch.cuda.max_memory_allocated() / 2**30


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
    args = parser.parse_args()
    require_cuda()
    cfg = load_config("realesrgan-x4")
    batch, gt = cfg.data.batch_size, cfg.data.gt_size
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"\n| stage-3 step (batch {batch}, GT {gt}) | steps/s | patches/s | peak memory GiB |\n|---|---:|---:|---:|")
    for name, (overrides, compiled) in VARIANTS.items():
        rate, peak = train_rate(overrides, compiled, args.steps, args.warmup)
        print(f"| {name} | {rate:.2f} | {rate * batch:.1f} | {peak:.1f} |", flush=True)
        gc.collect()
        torch.cuda.empty_cache()
    print(f"\n| inference ms, 1x3x{LR_SIDE}x{LR_SIDE} LR | " + " | ".join(INFERENCE) + " |")
    print("|---|" + "---:|" * len(INFERENCE))
    nets = {"teacher (RRDBNet 64/23/32)": 1.0, f"student (width {cfg.student.width:g})": cfg.student.width}
    for name, width in nets.items():
        times = [inference_ms(sr_generator(cfg, width), bf16, compiled) for bf16, compiled in INFERENCE.values()]
        print(f"| {name} | " + " | ".join(f"{t:.1f}" for t in times) + " |", flush=True)


if __name__ == "__main__":
    main()

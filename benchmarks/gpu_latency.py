"""GPU: inference latency of the teacher (RRDBNet 64/23/32) and the students (widths 1/2, 1/4, 1/8) at a 256x256 LR
input: eager fp32, eager bf16 + channels_last, torch.compile'd bf16 + channels_last, and the preset's student
exported to ONNX (`sdakd export`'s exporter) under ONNX Runtime's CUDA provider when this onnxruntime has it.

Eager and compiled: the median forward on a device tensor (sdakd.evaluate.latency_ms). ONNX Runtime: the shipped
path (`sdakd upscale`'s onnx_upscaler), host tensors in and out, so its figure includes the copies. Compiling
takes tens of seconds per network: only the teacher and the preset's student (width 1/4) are compiled (in the dry
run, the student alone).
SDAKD_GPU_CHECK_DRY=1 without a GPU: the same at toy scale on the CPU, ONNX Runtime's CPU provider.

    python -m benchmarks.gpu_latency WORK_DIR [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as `python benchmarks/gpu_latency.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_common import check_device, check_overrides, compile_options, device_name, record
from benchmarks.students import WIDTHS
from sdakd.config.load import load_config
from sdakd.errors import SdakdError
from sdakd.evaluate import latency_ms
from sdakd.models.from_config import sr_generator

PRESET_WIDTH = 0.25
ONNX_PROVIDER = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def torch_ms(net: nn.Module, device: torch.device, side: int, repeats: int, bf16: bool, compiled: bool) -> float:
    net = net.to(device).eval()
    if bf16:
        net = net.to(torch.bfloat16, memory_format=torch.channels_last)
    if compiled:
        net.compile(**compile_options(device))
    return latency_ms(net, (1, 3, side, side), warmup=5, repeats=repeats)


def onnx_ms(net: nn.Module, device: torch.device, side: int, repeats: int, work: Path) -> float | str:
    """ms per call of the exported net under ONNX Runtime, or why it could not run."""
    from sdakd.ship.export import write_onnx
    from sdakd.ship.runtimes import onnx_upscaler

    path = work / "student.onnx"
    try:
        write_onnx(net.eval(), path, {})
        upscaler = onnx_upscaler(path, device)
    except SdakdError as err:  # no onnx/onnxscript, or no provider for this device
        return f"not run: {err}"
    x = torch.rand(1, 3, side, side)
    times = []
    for i in range(5 + repeats):
        began = time.perf_counter()
        upscaler.forward(x)
        if i >= 5:
            times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a scratch folder for the ONNX file")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = check_device()
    side = 256 if device.type == "cuda" else 16
    cfg = load_config("realesrgan-x4", overrides=list(check_overrides(device)))
    args.work.mkdir(parents=True, exist_ok=True)
    nets = {"teacher": 1.0} | {f"student width {w:g}": w for w in WIDTHS if w < 1}
    print(f"inference ms, 1x3x{side}x{side} LR, {device_name(device)}, median of {args.repeats}")
    figures: dict[str, dict[str, float | str]] = {}
    for name, width in nets.items():
        build = partial(sr_generator, cfg, width)  # a fresh net per variant
        row = figures[name] = {
            "eager fp32": torch_ms(build(), device, side, args.repeats, bf16=False, compiled=False),
            "eager bf16 + channels_last": torch_ms(build(), device, side, args.repeats, bf16=True, compiled=False),
        }
        if width == PRESET_WIDTH or (width == 1.0 and device.type == "cuda"):  # the dry run compiles one
            row["compiled bf16 + channels_last"] = torch_ms(build(), device, side, args.repeats, True, True)
        if width == PRESET_WIDTH:
            provider = ONNX_PROVIDER[device.type]
            row[f"onnxruntime {provider} fp32, host in/out"] = onnx_ms(build(), device, side, args.repeats, args.work)
        print(f"  {name}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in row.items()), flush=True)
        record("latency", {"lr_side": side, name: row})


if __name__ == "__main__":
    main()

"""GPU: Real-ESRGAN's second-order degradation at GT 256, batch 12, on the training device vs in the loader
(patches/s), and what the loader serves out of the project's data store with its worker processes.

The store is built from the bundled photos with the public entry points (`sdakd.data.build_dataset`, read back by
`StepBatches`), so whatever store those write and read is the one timed. Four figures, patches/s:
- loader path, in process: `StepBatches[step]` (crop, draw, degrade per sample with FFT blur and libjpeg);
- loader path, N workers: the same through `batch_loader` (N = min(8, CPU cores));
- device path: `degrade_on_device` on clean crops already in pinned host memory (the device's share alone);
- device path end to end: clean crops from N workers (`StepBatches.clean`), degraded on the device.
SDAKD_GPU_CHECK_DRY=1 without a GPU: the same at toy scale on the CPU (benchmarks.gpu_common).

    python -m benchmarks.gpu_degrade WORK_DIR [--batches N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

if __package__ in (None, ""):  # run as `python benchmarks/gpu_degrade.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_common import check_device, device_name, record, synchronize
from sdakd.data import StepBatches, batch_loader, build_dataset
from sdakd.data.degrade_device import degrade_on_device
from sdakd.data.loader import CleanCrops

SCALE = 4


def rate(patches: int, run: Callable[[], None], device: torch.device) -> float:
    """patches/s of `run`, which makes `patches` patches, once the device finished its queued work."""
    began = time.perf_counter()
    run()
    synchronize(device)
    return patches / (time.perf_counter() - began)


def from_workers(dataset: Dataset, count: int, workers: int, then: Callable[[Any], object]) -> Callable[[], None]:
    """`count` batches from `workers` loader processes, each handed to `then`; the workers' start-up (up to the
    first batch) happens before the returned call, so it is not timed."""
    loader = iter(batch_loader(dataset, 1000 * count, count + 1, num_workers=workers))
    then(next(loader))
    return lambda: [then(served) for served in loader]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a scratch folder for the data store")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per figure")
    args = parser.parse_args()
    device = check_device()
    gt, batch, count = (256, 12, args.batches) if device.type == "cuda" else (32, 2, 2)
    workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 2
    began = time.perf_counter()
    build_dataset(args.work / "store", images_dir=None, min_side=gt)
    built_s = time.perf_counter() - began
    batches = StepBatches(args.work / "store", split="train", batch_size=batch, gt_size=gt, scale=SCALE,
                          degradation="second_order")
    clean = [batches.clean(step) for step in range(count + 1)]
    for crops in clean:
        crops["hr"] = crops["hr"].pin_memory() if device.type == "cuda" else crops["hr"]
    degrade_on_device(clean[-1], SCALE, device)  # warm-up: kernels load, cuDNN picks its algorithms
    synchronize(device)

    patches = batch * count
    on_device = partial(degrade_on_device, scale=SCALE, device=device)
    figures = {
        "loader path, in process": rate(patches, lambda: [batches[s] for s in range(count)], device),
        f"loader path, {workers} workers": rate(patches, from_workers(batches, count, workers, len), device),
        "device path, degrade alone": rate(patches, lambda: [on_device(c) for c in clean[:count]], device),
        f"device path, {workers} workers + degrade on the device":
            rate(patches, from_workers(CleanCrops(batches), count, workers, on_device), device),
    }
    print(f"second_order at GT {gt}, batch {batch}, {count} batches per figure, device {device_name(device)}; "
          f"store built in {built_s:.1f} s ({len(batches.images)} training images)")
    for name, patches_per_s in figures.items():
        print(f"  {name:<52} {patches_per_s:8.1f} patches/s")
    record("degrade", {"gt": gt, "batch": batch, "store_build_s": built_s, "patches_per_s": figures})


if __name__ == "__main__":
    main()

"""What the GPU check's benchmarks share: the device they time, the scale they run at, and where figures go.

On a CUDA GPU they run at paper scale (realesrgan-x4: GT 256, batch 12, RRDBNet 64/23/32 teacher). With
SDAKD_GPU_CHECK_DRY=1 and no GPU (benchmarks/gpu_check.sh's CPU dry run) the same code runs on the CPU at a toy
scale (DRY_SCALE), so that a broken phase shows up here rather than in the GPU machine's few minutes; its figures
say `"dry_run": true` and measure nothing worth keeping. Each benchmark adds its figures to
SDAKD_FIGURES/<name>.json (when set), which gpu_check.sh gathers into one figures.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

# The dry run's scale: small crops and batches, a 2-block teacher of 16 features (its 1/4-width student: 4), the
# perceptual VGG19 cut after its second conv.
DRY_SCALE = ("data.gt_size=32", "data.batch_size=2", "teacher.num_feat=16", "teacher.num_block=2",
             "teacher.num_grow_ch=8", "teacher.d_num_feat=16", "data.val_max_side=64",
             "loss.perceptual.layers={conv1_2: 1.0}")
# torch.compile's backend in the dry run: aot_eager traces and differentiates as inductor does, without compiling
# C++ for minutes on a CPU.
DRY_COMPILE = {"backend": "aot_eager"}


def dry_run() -> bool:
    return os.environ.get("SDAKD_GPU_CHECK_DRY") == "1"


def check_device() -> torch.device:
    """cuda, or the CPU in a dry run; without either, exit with the reason (gpu_check.sh skips such phases)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if dry_run():
        torch.set_num_threads(1)
        return torch.device("cpu")
    sys.exit(f"{Path(sys.argv[0]).name}: no CUDA GPU is visible (torch.cuda.is_available() is False), so nothing "
             "was measured; SDAKD_GPU_CHECK_DRY=1 runs it at toy scale on the CPU")


def cache_override() -> tuple[str, ...]:
    """The check's scratch folder as the runs' cache (not the checkout's .sdakd), when gpu_check.sh named one."""
    work = os.environ.get("SDAKD_GPU_CHECK_WORK")
    return (f"run.cache_dir={Path(work) / 'cache'}",) if work else ()


def check_overrides(device: torch.device) -> tuple[str, ...]:
    """The config changes of the check on `device`: the dry run's scale on a CPU, and the cache folder."""
    return (DRY_SCALE if device.type == "cpu" else ()) + cache_override()


def compile_options(device: torch.device) -> dict[str, Any]:
    return DRY_COMPILE if device.type == "cpu" else {}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} thread)"


def _figures_file(name: str) -> Path | None:
    folder = os.environ.get("SDAKD_FIGURES")
    return Path(folder) / f"{name}.json" if folder else None


def recorded(name: str) -> dict[str, Any]:
    """What earlier phases recorded under `name` ({} when nothing was, or gpu_check.sh did not set the folder)."""
    path = _figures_file(name)
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def record(name: str, figures: dict[str, Any]) -> None:
    """Add `figures` to SDAKD_FIGURES/<name>.json (a no-op when gpu_check.sh did not set the folder)."""
    path = _figures_file(name)
    if path is not None:
        path.write_text(json.dumps(recorded(name) | figures | {"dry_run": dry_run()}, indent=2, default=str))

"""`sdakd upscale`: a student, teacher or exported model applied to image files and folders.

Bad arguments are refused before any work; an image that cannot be read or written, or that needs more memory
than is available (estimated from its size before it is decoded), is reported by name and skipped, the others are
written, and the command exits non-zero at the end.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import psutil
import torch
from tqdm import tqdm

from sdakd.engine.device import resolve_device
from sdakd.errors import SdakdError, shown
from sdakd.ship.images import read_picture, upscale_alpha, write_picture
from sdakd.ship.outputs import output_paths
from sdakd.ship.runtimes import Upscaler, load_upscaler
from sdakd.ship.tiling import check_tiling, upscale_image

DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?")
# Memory an image needs, in bytes: what its own size sets, and what one tile sets (by the network's largest layer,
# twice: the layers around it live too; measured 1.7x-2.5x on RRDBNet and SRVGGNetCompact at a 256-pixel tile).
INPUT_BYTES = 32  # per input pixel: the decoded file and its float32 copies
OUTPUT_BYTES = 52  # per output pixel: the float32 sum of the tiles, its clamped copy, two float32 steps of
# rounding it to integers (write_picture), and an alpha channel
TILE_OUTPUT_BYTES = 12  # per output pixel of a tile: its float32 result, beside the network's layers
LAYER_FACTOR = 2


def available_memory() -> int:
    return psutil.virtual_memory().available


def memory_check(
    source: Path, up: Upscaler, tile: int, overlap: int, device: torch.device
) -> Callable[[int, int], None]:
    """What `read_picture` calls with the image's size before decoding it: refuses one that needs more memory than
    is available (the host's; a tile's layers on a GPU count against the GPU's free memory)."""

    def check(width: int, height: int) -> None:
        s = up.scale
        span_x, span_y = (min(n, tile + 2 * overlap) if tile else n for n in (width, height))
        image = INPUT_BYTES * width * height + OUTPUT_BYTES * width * height * s * s
        tiles = (LAYER_FACTOR * up.tile_bytes + TILE_OUTPUT_BYTES) * span_x * span_y * s * s
        host, free = image + (tiles if device.type == "cpu" else 0), available_memory()
        if host > free:
            raise SdakdError(f"{source}: {width}x{height} upscaled x{s} needs about {host / 1e9:.1f} GB of memory and "
                             f"{free / 1e9:.1f} GB are available; skipped (upscale it in parts)")
        if device.type == "cuda" and tiles > (gpu_free := torch.cuda.mem_get_info(device)[0]):
            raise SdakdError(f"{source}: a tile needs about {tiles / 1e9:.1f} GB on {device} and {gpu_free / 1e9:.1f} "
                             f"GB are free; skipped: try a smaller --tile")

    return check


def upscale_file(up: Upscaler, source: Path, target: Path, tile: int, overlap: int, device: torch.device,
                 bar: Any = None) -> None:  # fmt: skip
    picture = read_picture(source, memory_check(source, up, tile, overlap, device))
    try:
        rgb = upscale_image(up, picture.rgb[None], tile, overlap, bar)[0]
        alpha = upscale_alpha(picture.alpha, up.scale) if picture.alpha is not None else None
    except torch.OutOfMemoryError:
        raise SdakdError(f"{source}: out of device memory at --tile {tile}; try a smaller --tile") from None
    except (MemoryError, RuntimeError) as err:  # beyond the estimate: torch's CPU allocator raises RuntimeError
        if not isinstance(err, MemoryError) and "alloc" not in str(err):
            raise
        raise SdakdError(f"{source}: out of memory ({' '.join(str(err).split())[:200]}); skipped") from None
    try:
        write_picture(target, rgb, alpha, picture)
    except (OSError, ValueError) as err:
        raise SdakdError(f"{target}: cannot write it ({' '.join(str(err).split())})") from None


def upscale_files(
    inputs: list[Path], model: Path, out: Path, tile: int = 512, overlap: int = 32, device: str = "auto",
    bf16: bool = False, arch: str | None = None, params: Mapping[str, Any] = (),
) -> list[str]:
    """Upscale every input image into `out`; the messages of the images that failed (empty: all written)."""
    if not DEVICES.fullmatch(device):
        raise SdakdError(f"--device {shown(device)}: allowed auto, cpu, cuda or cuda:N")
    check_tiling(tile, overlap)
    if out.exists() and not out.is_dir():
        raise SdakdError(f"--out {out} is a file; name a folder")
    pairs, skipped = output_paths(inputs, out)
    for entry in skipped:
        print(f"skipped {entry}, not a regular file", file=sys.stderr)
    target_device = resolve_device(device)
    up = load_upscaler(model, target_device, bf16, arch, params)
    failed = []
    with tqdm(pairs.items(), desc="images", unit="img") as images, tqdm(desc="tiles", unit="tile", leave=False) as bar:
        for source, target in images:
            images.set_postfix_str(source.name)
            try:
                upscale_file(up, source, target, tile, overlap, target_device, bar)
            except SdakdError as err:
                failed.append(str(err))
                tqdm.write(f"error: {err}", file=sys.stderr)
    return failed

"""`sdakd upscale`: a student, teacher or exported model applied to image files and folders.

Bad arguments are refused before any work; an image that cannot be read or written is reported by name and
skipped, the others are written, and the command exits non-zero at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import torch
from tqdm import tqdm

from sdakd.engine.device import resolve_device
from sdakd.errors import SdakdError
from sdakd.ship.images import output_paths, read_picture, upscale_alpha, write_picture
from sdakd.ship.runtimes import Upscaler, load_upscaler
from sdakd.ship.tiling import check_tiling, upscale_image

DEVICES = ("auto", "cpu", "cuda")


def upscale_file(up: Upscaler, source: Path, target: Path, tile: int, overlap: int, bar: Any = None) -> None:
    picture = read_picture(source)
    try:
        rgb = upscale_image(up, picture.rgb[None], tile, overlap, bar)[0]
    except torch.OutOfMemoryError:
        raise SdakdError(f"{source}: out of device memory at --tile {tile}; try a smaller --tile") from None
    alpha = upscale_alpha(picture.alpha, up.scale) if picture.alpha is not None else None
    try:
        write_picture(target, rgb, alpha, picture)
    except (OSError, ValueError) as err:
        raise SdakdError(f"{target}: cannot write it ({' '.join(str(err).split())})") from None


def upscale_files(
    inputs: list[Path], model: Path, out: Path, tile: int = 512, overlap: int = 32, device: str = "auto",
    bf16: bool = False, arch: str | None = None, params: Mapping[str, Any] = (),
) -> list[str]:
    """Upscale every input image into `out`; the messages of the images that failed (empty: all written)."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise SdakdError(f"--device {device!r}: allowed {', '.join(DEVICES)} (or cuda:N)")
    check_tiling(tile, overlap)
    if out.exists() and not out.is_dir():
        raise SdakdError(f"--out {out} is a file; name a folder")
    pairs = output_paths(inputs, out)
    up = load_upscaler(model, resolve_device(device), bf16, arch, params)
    failed = []
    with tqdm(pairs.items(), desc="images", unit="img") as images, tqdm(desc="tiles", unit="tile", leave=False) as bar:
        for source, target in images:
            images.set_postfix_str(source.name)
            try:
                upscale_file(up, source, target, tile, overlap, bar)
            except SdakdError as err:
                failed.append(str(err))
                tqdm.write(f"error: {err}", file=sys.stderr)
    return failed

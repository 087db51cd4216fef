"""Image files in and out of the upscaler: modes, bit depth, alpha; animations refused (`outputs` says where each
output goes).

The network sees RGB in [0, 1]. Greyscale images go through it as three equal channels and come back to one
(ITU-R 601 luma, as Pillow converts); an alpha channel is upscaled bicubically beside it. 8-bit files stay 8-bit,
16-bit greyscale (Pillow's I;16) stays 16-bit; palette, 1-bit and other modes come out as RGB(A) or L.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from sdakd.errors import SdakdError

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
JPEG_QUALITY = 95
GREY_16 = ("I;16", "I;16B", "I;16L", "I")  # Pillow's 16-bit greyscale (older Pillows: I)


@dataclass
class Picture:
    """An image as the network takes it: `rgb` (3, H, W) float32 in [0, 1], and how to write it back."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None  # (1, H, W) in [0, 1]
    grey: bool
    depth: int  # 8 or 16 bits per channel
    format: str  # Pillow's name for the file format: PNG, JPEG, ...
    info: dict[str, Any] = field(default_factory=dict)  # what the writer passes on (ICC profile)


def read_picture(path: Path, check_size: Callable[[int, int], None] = lambda width, height: None) -> Picture:
    """The image at `path`, once `check_size(width, height)` let it be decoded; SdakdError naming it when it is
    unreadable (missing, truncated, not an image) or an animation (GIF, APNG, WebP, TIFF pages: upscaling its first
    frame alone would drop the rest without a word)."""
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            if frames > 1 and img.format != "MPO":  # MPO: a camera's JPEG with its preview frames
                raise SdakdError(f"{path}: an animation or multi-page file of {frames} frames; upscale takes single "
                                 "images: split its frames into files first (e.g. ffmpeg -i IN frame%04d.png)")
            check_size(*img.size)
            img.load()
            stored = "JPEG" if img.format == "MPO" else img.format or "PNG"  # MPO: a camera's JPEG
            return _picture(ImageOps.exif_transpose(img), stored)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise SdakdError(f"{path}: cannot read this image ({' '.join(str(err).split())})") from None


def _picture(img: Image.Image, stored: str) -> Picture:
    """`img` (turned upright by its EXIF orientation, which the output then does not need) as a Picture."""
    info = {"icc_profile": img.info["icc_profile"]} if img.info.get("icc_profile") else {}
    if img.mode in GREY_16:
        level = torch.from_numpy(np.asarray(img, dtype=np.float32) / 65535.0).clamp(0, 1)
        return Picture(level[None].expand(3, -1, -1).contiguous(), None, True, 16, stored, info)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    grey = img.mode in ("L", "LA", "1")
    img = img.convert(("LA" if has_alpha else "L") if grey else ("RGBA" if has_alpha else "RGB"))
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    pixels = pixels[..., None] if pixels.dim() == 2 else pixels
    colour = pixels[..., :1].expand(-1, -1, 3) if grey else pixels[..., :3]
    alpha = pixels[..., -1:].permute(2, 0, 1).contiguous() if has_alpha else None
    return Picture(colour.permute(2, 0, 1).contiguous(), alpha, grey, 8, stored, info)


def upscale_alpha(alpha: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(alpha[None], scale_factor=scale, mode="bicubic", align_corners=False)[0].clamp(0, 1)


def write_picture(path: Path, rgb: torch.Tensor, alpha: torch.Tensor | None, like: Picture) -> None:
    """Write `rgb` (3, H, W) (and `alpha` (1, H, W)), clamped to [0, 1], as `like` was stored."""
    channels = rgb.clamp(0, 1).permute(1, 2, 0).numpy()
    if like.grey:
        channels = channels @ LUMA[:, None]
    if alpha is not None:
        channels = np.concatenate([channels, alpha.permute(1, 2, 0).numpy()], axis=2)
    top = 65535 if like.depth == 16 else 255
    pixels = np.rint(channels * top).astype(np.uint16 if like.depth == 16 else np.uint8)
    pixels = pixels[..., 0] if pixels.shape[2] == 1 else pixels
    image = Image.fromarray(pixels)  # uint8: L, LA, RGB, RGBA; uint16 (H, W): I;16
    options = dict(like.info) | ({"quality": JPEG_QUALITY} if like.format == "JPEG" else {})
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=like.format, **options)

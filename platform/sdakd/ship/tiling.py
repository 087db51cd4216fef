"""Upscale an image of any size in overlapping tiles, blended so that tiling does not change the result.

`tile` is the largest core side (LR pixels), `overlap` how far each tile reads past its core on every side. Where
two tiles meet at boundary b, their weights cross-fade along a raised-cosine ramp over the central half of the
read-past band, LR [b - overlap/2, b + overlap/2): each tile's weight is zero within overlap/2 of the edges it
read up to, and the weights of all tiles sum to one everywhere. So when overlap/2 is at least the network's
receptive radius (the LR pixels one output pixel sees on each side), every pixel is blended only from tiles that
computed it exactly as the whole image would: the output equals the untiled one up to float rounding. With a
smaller overlap it differs slightly, smoothly and without seams.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from sdakd.errors import SdakdError
from sdakd.ship.runtimes import Upscaler


def check_tiling(tile: int, overlap: int) -> None:
    if tile < 0 or overlap < 0:
        raise SdakdError(f"--tile and --overlap must be >= 0 (got {tile}, {overlap})")
    if tile and tile < 2 * overlap:
        raise SdakdError(f"--tile {tile} must be 0 (whole image) or at least 2 x --overlap ({2 * overlap})")


def boundaries(units: int, tile_units: int) -> list[int]:
    """Split [0, units) into ceil(units / tile_units) nearly equal cores; their edges, 0 and `units` included."""
    count = max(1, math.ceil(units / tile_units))
    return [round(i * units / count) for i in range(count + 1)]


def rise(length: int, start: int, boundary: int, scale: int, overlap: int) -> torch.Tensor:
    """The weight of the tile after `boundary` over output pixels [start, start + length): 0 before LR
    boundary - overlap/2, 1 from boundary + overlap/2 on (the tile before it gets 1 minus this)."""
    centres = torch.arange(start, start + length, dtype=torch.float64) + 0.5
    if overlap == 0:
        return (centres >= boundary * scale).double()
    t = ((centres - scale * (boundary - overlap / 2)) / (scale * overlap)).clamp(0, 1)
    return 0.5 - 0.5 * torch.cos(math.pi * t)


def axis_weight(lo: int, hi: int, core: tuple[int, int], size: int, scale: int, overlap: int) -> torch.Tensor:
    """One tile's weights along one axis: its input spans LR [lo, hi), its core [core0, core1) of [0, size)."""
    length, start = (hi - lo) * scale, lo * scale
    weight = torch.ones(length, dtype=torch.float64)
    if core[0] > 0:
        weight *= rise(length, start, core[0], scale, overlap)
    if core[1] < size:
        weight *= 1 - rise(length, start, core[1], scale, overlap)
    return weight.float()


def upscale_image(
    up: Upscaler, image: torch.Tensor, tile: int = 0, overlap: int = 0, progress: Any = None
) -> torch.Tensor:
    """`up` applied to `image` (1, 3, H, W) in tiles: (1, 3, s*H, s*W). `progress`: a tqdm bar (anything with
    reset(total) and update(n)), counting tiles."""
    check_tiling(tile, overlap)
    _, _, height, width = image.shape
    m, s = up.multiple, up.scale
    padded = F.pad(image, (0, -width % m, 0, -height % m), mode="replicate") if height % m or width % m else image
    size_y, size_x = padded.shape[-2:]
    reach = math.ceil(overlap / m)  # the read-past band in whole m-pixel steps
    unit_tile = tile // m if tile else max(size_y, size_x) // m  # 0: one tile, the whole image
    if tile and unit_tile < max(1, 2 * reach):
        raise SdakdError(f"--tile {tile}: this network takes sides in {m}-pixel steps, so the tile must be at least "
                         f"{max(1, 2 * reach) * m} px for --overlap {overlap}")
    reach *= m
    rows = [b * m for b in boundaries(size_y // m, unit_tile)]
    cols = [b * m for b in boundaries(size_x // m, unit_tile)]
    if progress is not None:
        progress.reset(total=(len(rows) - 1) * (len(cols) - 1))
    out = torch.zeros(1, image.shape[1], size_y * s, size_x * s)
    for y0, y1 in zip(rows, rows[1:]):
        top, bottom = max(0, y0 - reach), min(size_y, y1 + reach)
        weight_y = axis_weight(top, bottom, (y0, y1), size_y, s, reach)
        for x0, x1 in zip(cols, cols[1:]):
            left, right = max(0, x0 - reach), min(size_x, x1 + reach)
            weight_x = axis_weight(left, right, (x0, x1), size_x, s, reach)
            result = up.forward(padded[..., top:bottom, left:right])
            out[..., top * s : bottom * s, left * s : right * s] += result * weight_y[:, None] * weight_x[None, :]
            if progress is not None:
                progress.update(1)
    return out[..., : height * s, : width * s]

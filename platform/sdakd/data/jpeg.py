"""Baseline JPEG (4:2:0, the standard tables scaled by quality as libjpeg scales them) encoded and decoded in torch,
batched with one quality per image: the device applier's JPEG stage.

It follows what libjpeg does through PIL (8-bit YCbCr, 2x2 chroma averaging, 8x8 orthonormal DCT, rounding to
the quantizer, triangle ("fancy") chroma upsampling) in floating point instead of libjpeg's integer arithmetic,
so the two differ by rounding only: tests/test_degrade_device.py bounds that by PSNR.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-T T.81 Annex K tables (luminance, chrominance), the ones libjpeg scales by quality
LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55), (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62), (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99), (18, 21, 26, 66, 99, 99, 99, 99), (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99), *((99,) * 8 for _ in range(4)),
)
RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
YCBCR_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


def quant_tables(quality: Tensor) -> Tensor:
    """(N, 2, 8, 8) luma and chroma quantizers for (N,) integer qualities 1..100 (libjpeg's jpeg_quality_scaling,
    baseline: clamped to 1..255)."""
    q = quality.double().clamp(1, 100)
    percent = torch.where(q < 50, 5000 / q, 200 - 2 * q).view(-1, 1, 1, 1)
    tables = torch.tensor((LUMA_TABLE, CHROMA_TABLE), dtype=torch.float64)
    return torch.floor((tables * percent + 50) / 100).clamp(1, 255)


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> Tensor:
    """The orthonormal 8-point DCT-II as a matrix: JPEG's forward transform is D @ block @ D^T."""
    k = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(device, dtype)


def _code_planes(planes: Tensor, tables: Tensor) -> Tensor:
    """Quantize and dequantize (N, P, H, W) planes (H, W multiples of 8) in 8x8 blocks with (N, 1|P, 8, 8) tables."""
    n, p, h, w = planes.shape
    d = _dct_matrix(planes.device, planes.dtype)
    blocks = (planes - 128).view(n, p, h // 8, 8, w // 8, 8).transpose(3, 4)
    q = tables.to(planes.device, planes.dtype, non_blocking=True)[:, :, None, None]
    coefficients = torch.round(d @ blocks @ d.T / q) * q
    decoded = (d.T @ coefficients @ d).transpose(3, 4).reshape(n, p, h, w) + 128
    return decoded.round().clamp(0, 255)


def jpeg(x: Tensor, quality: Tensor) -> Tensor:
    """(N, 3, H, W) in [0, 1] -> the same after JPEG at (N,) integer `quality` (host tensor), 8-bit values."""
    n, _, h, w = x.shape
    tables = quant_tables(quality)
    rgb = (x.clamp(0, 1) * 255).round()
    ycbcr = torch.einsum("ij,njhw->nihw", torch.tensor(RGB_TO_YCBCR, dtype=x.dtype, device=x.device), rgb)
    ycbcr = (ycbcr + torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).round()
    # whole 16x16 units, the image's last row and column repeated (as libjpeg extends a partial unit)
    ycbcr = F.pad(ycbcr, (0, -w % 16, 0, -h % 16), mode="replicate")
    luma = _code_planes(ycbcr[:, :1], tables[:, :1])
    chroma = _code_planes(F.avg_pool2d(ycbcr[:, 1:], 2).round(), tables[:, 1:])
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)  # the 3/4, 1/4 triangle
    ycbcr = torch.cat([luma, chroma - 128], 1)[..., :h, :w]
    rgb = torch.einsum("ij,njhw->nihw", torch.tensor(YCBCR_TO_RGB, dtype=x.dtype, device=x.device), ycbcr)
    return rgb.round().clamp(0, 255) / 255

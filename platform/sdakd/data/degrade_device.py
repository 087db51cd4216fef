"""The device applier: Real-ESRGAN's second-order degradation, batched on the device the HR crops are on.

Same pipeline and draws as the loader applier (`degrade.apply_second_order`); its own primitives: all blur kernels
of a batch as one grouped convolution (one batched FFT on CPU), JPEG in torch (`jpeg.py`). Only filters move to
the device; shapes, modes and noise seeds stay on the host, so degrading a batch never waits for the device.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from sdakd.data.degrade import apply_second_order, bicubic_up, fft_correlate, pad_mode
from sdakd.data.draws import Kernels, SecondOrderDraws
from sdakd.data.jpeg import jpeg


def batch_blur(x: Tensor, kernels: Kernels) -> Tensor:
    """Correlate each image of (N, C, H, W) with its own kernel: on CPU as one batched FFT (a CPU's depthwise 21x21
    convolution is several times slower), elsewhere as one grouped convolution."""
    if x.device.type == "cpu":
        return fft_correlate(x, kernels.weights.to(x.dtype), pad_mode(x, kernels))
    return conv_blur(x, kernels)


def conv_blur(x: Tensor, kernels: Kernels) -> Tensor:
    """Correlate each image of (N, C, H, W) with its own kernel: one convolution with N * C groups."""
    n, c, h, w = x.shape
    pad = kernels.weights.shape[-1] // 2
    padded = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode=pad_mode(x, kernels))
    weight = kernels.weights.to(x.dtype).repeat_interleave(c, 0).unsqueeze(1)
    with _plain_cudnn():
        return F.conv2d(padded, weight, groups=n * c).view(n, c, h, w)


@contextmanager
def _plain_cudnn() -> Iterator[None]:
    """Full fp32 convolution on CUDA (cuDNN would use TF32, ~1e-3 relative error), as the loader's FFT blur; and no
    autotuning, since the second round blurs at a new random size almost every step."""
    cudnn = torch.backends.cudnn
    precision, benchmark = cudnn.conv.fp32_precision, cudnn.benchmark
    cudnn.conv.fp32_precision, cudnn.benchmark = "ieee", False
    try:
        yield
    finally:
        cudnn.conv.fp32_precision, cudnn.benchmark = precision, benchmark


def degrade_batch(hr: Tensor, scale: int, draws: SecondOrderDraws) -> Tensor:
    """(N, 3, H, W) clean crops -> (N, 3, H/scale, W/scale) LR, 8-bit valued, on hr's device."""
    return apply_second_order(hr, scale, draws.to(hr.device), batch_blur, jpeg)


def degrade_on_device(batch: Mapping[str, Any], scale: int, device: torch.device) -> dict[str, Tensor]:
    """A loader's clean batch {"hr", "draws"[, "cond"]} -> the training batch {"lr", "hr"[, "cond"]} on `device`.

    With "cond" (GCFSR: a factor per sample, host tensor) each factor's samples are degraded together and their LR
    upsampled back to the HR size, as the loader path does per sample."""
    hr = batch["hr"].to(device, non_blocking=True)
    draws: SecondOrderDraws = batch["draws"]
    if "cond" not in batch:
        return {"lr": degrade_batch(hr, scale, draws), "hr": hr}
    factors = batch["cond"]
    lr = torch.empty_like(hr)
    for factor in factors.unique().tolist():
        index = (factors == factor).nonzero().flatten()
        rows = index.to(device, non_blocking=True)
        lr[rows] = bicubic_up(degrade_batch(hr[rows], int(factor), draws.select(index)), int(factor))
    return {"lr": lr, "hr": hr, "cond": factors.to(device, non_blocking=True)}

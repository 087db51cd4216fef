"""HR -> LR degradations on float tensors in [0, 1], shaped (C, H, W) or (N, C, H, W).

Every degradation has the signature `fn(hr, scale, generator) -> lr` and draws all its randomness from
`generator`, so one seed always gives one LR image.
"""

from __future__ import annotations

import io
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from sdakd.registry import Registry

Degradation = Callable[[Tensor, int, torch.Generator], Tensor]
T = TypeVar("T")

KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale used by Real-ESRGAN


def bicubic_down(hr: Tensor, scale: int) -> Tensor:
    """Antialiased bicubic downscale by `scale` (torch's closest match to MATLAB imresize), clamped to [0, 1]."""
    h, w = hr.shape[-2:]
    return _bicubic_resize(hr, (h // scale, w // scale))


def bicubic_up(lr: Tensor, scale: int) -> Tensor:
    """Bicubic upscale by `scale`: the interpolation baseline."""
    h, w = lr.shape[-2:]
    return _bicubic_resize(lr, (h * scale, w * scale))


def _bicubic_resize(img: Tensor, size: tuple[int, int]) -> Tensor:
    # antialias=True selects the PIL/MATLAB-style cubic (a = -0.5) for both directions
    batch = img if img.dim() == 4 else img.unsqueeze(0)
    out = F.interpolate(batch, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return out if img.dim() == 4 else out[0]


@dataclass(frozen=True, kw_only=True)
class DegradeStage:
    """One blur -> resize -> noise -> JPEG round of the second-order model."""

    blur_prob: float
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # over KERNELS
    blur_sigma: tuple[float, float]
    sinc_prob: float = 0.1
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_prob: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float]  # Gaussian sigma on the 0..255 scale
    poisson_scale_range: tuple[float, float]
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)


@dataclass(frozen=True, kw_only=True)
class SecondOrderParams:
    """Real-ESRGAN's train_realesrgan_x4plus.yml degradation options."""

    first: DegradeStage = field(
        default_factory=lambda: DegradeStage(
            blur_prob=1.0,
            blur_sigma=(0.2, 3.0),
            resize_prob=(0.2, 0.7, 0.1),
            resize_range=(0.15, 1.5),
            noise_range=(1.0, 30.0),
            poisson_scale_range=(0.05, 3.0),
        )
    )
    second: DegradeStage = field(
        default_factory=lambda: DegradeStage(
            blur_prob=0.8,
            blur_sigma=(0.2, 1.5),
            resize_prob=(0.3, 0.4, 0.3),
            resize_range=(0.3, 1.2),
            noise_range=(1.0, 25.0),
            poisson_scale_range=(0.05, 2.5),
        )
    )
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    final_sinc_prob: float = 0.8
    final_kernel_size: int = 21


def second_order(
    hr: Tensor, scale: int, generator: torch.Generator, params: SecondOrderParams = SecondOrderParams()
) -> Tensor:
    """Real-ESRGAN's second-order degradation; each image of a batch gets its own draws, in batch order."""
    if hr.dim() == 3:
        return _second_order_one(hr.unsqueeze(0), scale, generator, params)[0]
    return torch.cat([_second_order_one(img.unsqueeze(0), scale, generator, params) for img in hr])


def _second_order_one(x: Tensor, scale: int, g: torch.Generator, p: SecondOrderParams) -> Tensor:
    h, w = x.shape[-2:]
    # the first round resizes relative to the HR size, the second relative to the LR size
    x = _jpeg(g, _blur_resize_noise(g, x, p.first, (h, w), p.kernel_sizes), p.first.jpeg_range)
    x = _blur_resize_noise(g, x, p.second, (h / scale, w / scale), p.kernel_sizes)
    # final: resize + sinc and JPEG in random order (Real-ESRGAN: sinc ringing may come before or after JPEG)
    sinc = None
    if _chance(g, p.final_sinc_prob):
        sinc = _sinc_kernel(_uniform(g, math.pi / 3, math.pi), p.final_kernel_size)
    lr_size = (h // scale, w // scale)
    if _chance(g, 0.5):
        x = _random_resize(g, x, lr_size)
        x = x if sinc is None else _filter(x, sinc)
        x = _jpeg(g, x, p.second.jpeg_range)
    else:
        x = _jpeg(g, x, p.second.jpeg_range)
        x = _random_resize(g, x, lr_size)
        x = x if sinc is None else _filter(x, sinc)
    return (x * 255).round().clamp(0, 255) / 255


def _blur_resize_noise(
    g: torch.Generator, x: Tensor, stage: DegradeStage, base: tuple[float, float], kernel_sizes: Sequence[int]
) -> Tensor:
    if _chance(g, stage.blur_prob):
        x = _filter(x, _random_kernel(g, stage, _choice(g, kernel_sizes)))
    factor = _resize_factor(g, stage)
    x = _random_resize(g, x, (int(base[0] * factor), int(base[1] * factor)))
    return _add_noise(g, x, stage)


# ---------------------------------------------------------------- random draws, all from one generator


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g, dtype=torch.float64).item()


def _chance(g: torch.Generator, p: float) -> bool:
    return torch.rand((), generator=g, dtype=torch.float64).item() < p


def _choice(g: torch.Generator, options: Sequence[T], probs: Sequence[float] | None = None) -> T:
    weights = probs if probs is not None else [1.0] * len(options)
    # inverse CDF on one uniform draw: far cheaper than torch.multinomial for a handful of options
    u = _uniform(g, 0.0, sum(weights))
    for option, cumulative in zip(options, itertools.accumulate(weights)):
        if u < cumulative:
            return option
    return options[-1]


# ---------------------------------------------------------------- blur kernels (BasicSR's degradations.py)


def _grid(size: int) -> Tensor:
    """(size, size, 2) pixel offsets from the kernel centre."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def _mahalanobis(size: int, sigma_x: float, sigma_y: float, theta: float) -> Tensor:
    """x^T C^-1 x over the grid, for the covariance C with principal sigmas rotated by theta."""
    c, s = math.cos(theta), math.sin(theta)
    # C^-1 = R diag(1/sx^2, 1/sy^2) R^T, written out for the 2x2 case
    a = c * c / sigma_x**2 + s * s / sigma_y**2
    b = c * s * (1 / sigma_x**2 - 1 / sigma_y**2)
    d = s * s / sigma_x**2 + c * c / sigma_y**2
    xy = _grid(size)
    x, y = xy[..., 0], xy[..., 1]
    return a * x * x + 2 * b * x * y + d * y * y


def _random_kernel(g: torch.Generator, stage: DegradeStage, size: int) -> Tensor:
    if _chance(g, stage.sinc_prob):
        # small kernels cannot express very low cutoffs without heavy truncation
        low = math.pi / 3 if size < 13 else math.pi / 5
        return _sinc_kernel(_uniform(g, low, math.pi), size)
    kind = _choice(g, KERNELS, stage.kernel_prob)
    sigma_x = _uniform(g, *stage.blur_sigma)
    if kind.endswith("aniso"):
        sigma_y, theta = _uniform(g, *stage.blur_sigma), _uniform(g, -math.pi, math.pi)
    else:
        sigma_y, theta = sigma_x, 0.0
    q = _mahalanobis(size, sigma_x, sigma_y, theta)
    if kind.startswith("generalized"):
        kernel = torch.exp(-0.5 * q ** _beta(g, stage.betag_range))
    elif kind.startswith("plateau"):
        kernel = 1 / (q ** _beta(g, stage.betap_range) + 1)
    else:
        kernel = torch.exp(-0.5 * q)
    return kernel / kernel.sum()


def _beta(g: torch.Generator, beta_range: tuple[float, float]) -> float:
    # half the draws below 1 (heavier tails), half above (flatter top), as BasicSR does
    return _uniform(g, beta_range[0], 1.0) if _chance(g, 0.5) else _uniform(g, 1.0, beta_range[1])


def _sinc_kernel(cutoff: float, size: int) -> Tensor:
    """2-D circular low-pass (jinc) kernel: ringing and overshoot artifacts."""
    r = _grid(size).norm(dim=-1)
    kernel = cutoff * torch.special.bessel_j1(cutoff * r) / (2 * math.pi * r)
    kernel = torch.where(r == 0, torch.full_like(r, cutoff**2 / (4 * math.pi)), kernel)
    return kernel / kernel.sum()


def _filter(x: Tensor, kernel: Tensor) -> Tensor:
    """Correlate each channel of (1, C, H, W) with a (k, k) kernel, keeping the size (BasicSR's filter2D)."""
    pad = kernel.shape[-1] // 2
    # reflect needs pad < size; tiny intermediate images (small crops, strong downscale) fall back to replicate
    mode = "reflect" if pad < min(x.shape[-2:]) else "replicate"
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
    h, w = padded.shape[-2:]
    # via FFT: ~4x faster than a direct 21x21 conv on CPU. Sizes rounded up to 5-smooth lengths FFT handles fast;
    # the first 2*pad rows and columns hold the wrapped-around part and are cropped off.
    size = (_fft_length(h), _fft_length(w))
    spectrum = torch.fft.rfft2(padded, s=size) * torch.fft.rfft2(kernel.flip(0, 1).to(x.dtype), s=size)
    return torch.fft.irfft2(spectrum, s=size)[..., 2 * pad : h, 2 * pad : w]


def _fft_length(n: int) -> int:
    """The smallest m >= n with no prime factor above 5."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


# ---------------------------------------------------------------- resize, noise, JPEG


def _resize_factor(g: torch.Generator, stage: DegradeStage) -> float:
    kind = _choice(g, ("up", "down", "keep"), stage.resize_prob)
    if kind == "up":
        return _uniform(g, 1.0, stage.resize_range[1])
    if kind == "down":
        return _uniform(g, stage.resize_range[0], 1.0)
    return 1.0


def _random_resize(g: torch.Generator, x: Tensor, size: tuple[int, int]) -> Tensor:
    mode = _choice(g, RESIZE_MODES)
    size = (max(1, size[0]), max(1, size[1]))
    if size == tuple(x.shape[-2:]):
        return x
    options = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x, size=size, mode=mode, **options)


def _add_noise(g: torch.Generator, x: Tensor, stage: DegradeStage) -> Tensor:
    gray = _chance(g, stage.gray_noise_prob)
    if _chance(g, stage.gaussian_noise_prob):
        sigma = _uniform(g, *stage.noise_range) / 255
        shape = (1, 1, *x.shape[-2:]) if gray else x.shape
        noise = torch.randn(shape, generator=g, dtype=x.dtype) * sigma
    else:
        strength = _uniform(g, *stage.poisson_scale_range)
        source = (x * torch.tensor(GRAY, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True) if gray else x
        # count the distinct 8-bit intensities: the Poisson rate per level follows the image's bit depth
        codes = (source.clamp(0, 1) * 255).round()
        distinct = int((torch.bincount(codes.flatten().to(torch.int64), minlength=256) > 0).sum())
        levels = 2 ** math.ceil(math.log2(distinct))
        source = codes / 255
        noise = (torch.poisson(source * levels, generator=g) / levels - source) * strength
    return (x + noise).clamp(0, 1)


def _jpeg(g: torch.Generator, x: Tensor, quality_range: tuple[float, float]) -> Tensor:
    quality = round(_uniform(g, *quality_range))
    pixels = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as img:
        decoded = np.array(img.convert("RGB"))
    return torch.from_numpy(decoded).permute(2, 0, 1).unsqueeze(0).to(x.dtype) / 255


# ---------------------------------------------------------------- registry


def _bicubic(hr: Tensor, scale: int, generator: torch.Generator) -> Tensor:
    return bicubic_down(hr, scale)


DEGRADATIONS: Registry[Degradation] = Registry("degradation")
DEGRADATIONS.register("bicubic")(_bicubic)
DEGRADATIONS.register("second_order")(second_order)

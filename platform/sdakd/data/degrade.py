"""HR -> LR degradations on float tensors in [0, 1], shaped (C, H, W) or (N, C, H, W).

Every registered degradation has the signature `fn(hr, scale, generator) -> lr` and draws all its randomness from
`generator`, so one seed always gives one LR image. The second-order model is one pipeline (`apply_second_order`)
over the parameters `draws.draw_second_order` drew, with two sets of primitives: per sample on CPU here (FFT blur,
libjpeg through PIL) and batched on the training device in `degrade_device` (grouped convolution, torch JPEG).
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from sdakd.data.draws import Kernels, RoundDraws, SecondOrderDraws, SecondOrderParams, draw_second_order
from sdakd.registry import Registry

Degradation = Callable[[Tensor, int, torch.Generator], Tensor]
Blur = Callable[[Tensor, Kernels], Tensor]  # (N, C, H, W), N kernels -> (N, C, H, W)
Jpeg = Callable[[Tensor, Tensor], Tensor]  # (N, 3, H, W), (N,) qualities -> (N, 3, H, W)

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


def second_order(
    hr: Tensor, scale: int, generator: torch.Generator, params: SecondOrderParams = SecondOrderParams()
) -> Tensor:
    """Real-ESRGAN's second-order degradation, per sample on CPU; batch-wide draws first, then one seed per image."""
    batch = hr if hr.dim() == 4 else hr.unsqueeze(0)
    seeds = torch.randint(2**62, (len(batch),), generator=generator).tolist()
    lr = degrade_per_sample(batch, scale, draw_second_order(generator, seeds, params))
    return lr if hr.dim() == 4 else lr[0]


def degrade_per_sample(hr: Tensor, scale: int, draws: SecondOrderDraws) -> Tensor:
    """The loader applier: each image of (N, C, H, W) on its own, with FFT blur and libjpeg."""
    return torch.cat([apply_second_order(hr[i : i + 1], scale, draws.select(slice(i, i + 1)), fft_blur, pil_jpeg)
                      for i in range(len(hr))])


def apply_second_order(hr: Tensor, scale: int, d: SecondOrderDraws, blur: Blur, jpeg: Jpeg) -> Tensor:
    """Both appliers' pipeline: two blur -> resize -> noise -> JPEG rounds, then resize + sinc and JPEG in the
    drawn order (Real-ESRGAN: sinc ringing may come before or after JPEG), then 8-bit rounding."""
    h, w = hr.shape[-2:]
    # the first round resizes relative to the HR size, the second relative to the LR size
    x = jpeg(degrade_round(hr, d.first, (h, w), blur), d.quality[:, 0])
    x = degrade_round(x, d.second, (h / scale, w / scale), blur)
    lr_size = (h // scale, w // scale)
    if d.sinc_then_jpeg:
        x = jpeg(blur(resize(x, lr_size, d.final_mode), d.sinc), d.quality[:, 1])
    else:
        x = blur(resize(jpeg(x, d.quality[:, 1]), lr_size, d.final_mode), d.sinc)
    return quantize(x)


def degrade_round(x: Tensor, r: RoundDraws, base: tuple[float, float], blur: Blur) -> Tensor:
    x = blur(x, r.blur)
    x = resize(x, (int(base[0] * r.resize_factor), int(base[1] * r.resize_factor)), r.resize_mode)
    return add_noise(x, r)


def quantize(x: Tensor) -> Tensor:
    """Clamped to [0, 1] and rounded to 8 bits, as Real-ESRGAN's LR images are."""
    return (x * 255).round().clamp(0, 255) / 255


# ---------------------------------------------------------------- stages both appliers share


def pad_mode(x: Tensor, kernels: Kernels) -> str:
    """Reflect needs pad < size; tiny intermediate images (small crops, strong downscale) fall back to replicate.
    Decided on the padded kernel side, so that both appliers pad alike."""
    return "reflect" if kernels.weights.shape[-1] // 2 < min(x.shape[-2:]) else "replicate"


def resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    size = (max(1, size[0]), max(1, size[1]))
    if size == tuple(x.shape[-2:]):
        return x
    options = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x, size=size, mode=mode, **options)


def add_noise(x: Tensor, r: RoundDraws) -> Tensor:
    """Gaussian or Poisson noise, colour or grey, each sample's field from a generator seeded by its noise seed
    on x's device (on CPU both appliers draw the same field)."""
    noisy = []
    gray_weights = torch.tensor(GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    for i, (gaussian, gray, strength, seed) in enumerate(
        zip(r.gaussian.tolist(), r.gray.tolist(), r.strength.tolist(), r.noise_seeds.tolist())
    ):
        img = x[i : i + 1]
        g = torch.Generator(x.device).manual_seed(seed)
        if gaussian:
            shape = (1, 1, *img.shape[-2:]) if gray else img.shape
            noise = torch.randn(shape, generator=g, dtype=x.dtype, device=x.device) * strength
        else:
            source = (img * gray_weights).sum(1, keepdim=True) if gray else img
            # the Poisson rate per level follows the image's bit depth: its distinct 8-bit codes, rounded up to 2^k
            codes = (source.clamp(0, 1) * 255).round()
            present = torch.zeros(256, device=x.device).scatter_(0, codes.flatten().long(), 1.0)
            levels = 2 ** torch.ceil(torch.log2(present.sum()))
            source = codes / 255
            noise = (torch.poisson(source * levels, generator=g) / levels - source) * strength
        noisy.append((img + noise).clamp(0, 1))
    return torch.cat(noisy)


# ---------------------------------------------------------------- the loader's primitives (one image at a time)


def fft_blur(x: Tensor, kernels: Kernels) -> Tensor:
    """Correlate (1, C, H, W) with its kernel at its true size, keeping the size (BasicSR's filter2D)."""
    size = int(kernels.sizes[0])
    if size == 1:
        return x
    start = (kernels.weights.shape[-1] - size) // 2
    kernel = kernels.weights[:, start : start + size, start : start + size]
    return fft_correlate(x, kernel, pad_mode(x, kernels))


def fft_correlate(x: Tensor, weights: Tensor, mode: str) -> Tensor:
    """Correlate each image of (N, C, H, W) with its (k, k) kernel of (N, k, k), padding by k // 2 with `mode`.

    Via FFT: ~4x faster than a direct 21x21 conv on CPU. Sizes rounded up to 5-smooth lengths FFT handles fast;
    the first 2 * pad rows and columns hold the wrapped-around part and are cropped off."""
    pad = weights.shape[-1] // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
    h, w = padded.shape[-2:]
    size = (_fft_length(h), _fft_length(w))
    kernels = torch.fft.rfft2(weights.flip(-2, -1).to(x.dtype), s=size).unsqueeze(1)
    return torch.fft.irfft2(torch.fft.rfft2(padded, s=size) * kernels, s=size)[..., 2 * pad : h, 2 * pad : w]


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


def pil_jpeg(x: Tensor, quality: Tensor) -> Tensor:
    """libjpeg (through PIL) on a (1, 3, H, W) image: quantized to 8 bits, encoded at `quality`, decoded."""
    pixels = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(quality[0]))
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

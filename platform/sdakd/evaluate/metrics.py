"""Image quality on the BasicSR convention: 8-bit quantized, BT.601 Y channel, `crop_border` pixels dropped.

Inputs are RGB floats in [0, 1], shaped (N, 3, H, W) or (3, H, W); scores are means of per-image values.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio

Y_WEIGHTS = (65.481, 128.553, 24.966)  # BT.601 for R, G, B in [0, 1] -> Y in [16, 235]
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def quantize(img: Tensor) -> Tensor:
    """Round to the 8-bit grid, as saving the image as PNG would."""
    return (img.clamp(0, 1) * 255).round() / 255


def rgb_to_y(img: Tensor) -> Tensor:
    """BT.601 luma of [0, 1] RGB (..., 3, H, W) -> (..., 1, H, W) on the [16, 235] scale (BasicSR, MATLAB)."""
    weights = torch.tensor(Y_WEIGHTS, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return 16 + (img * weights).sum(dim=-3, keepdim=True)


def psnr_y(sr: Tensor, hr: Tensor, crop_border: int) -> float:
    """PSNR in dB on Y (data range 255), mean over images; inf when the images agree after quantization."""
    sr_y, hr_y = _y_pair(sr, hr, crop_border)
    per_image = peak_signal_noise_ratio(sr_y, hr_y, data_range=255.0, reduction="none", dim=(1, 2, 3))
    return float(per_image.mean())


def ssim_y(sr: Tensor, hr: Tensor, crop_border: int) -> float:
    """SSIM on Y as BasicSR's calculate_ssim: 11x11 Gaussian window (sigma 1.5), 'valid' filtering, range 255."""
    sr_y, hr_y = _y_pair(sr, hr, crop_border)
    return float(_ssim(sr_y, hr_y, data_range=255.0).mean())


def _y_pair(sr: Tensor, hr: Tensor, crop_border: int) -> tuple[Tensor, Tensor]:
    if sr.shape != hr.shape:
        raise ValueError(f"sr {tuple(sr.shape)} and hr {tuple(hr.shape)} differ in shape")
    if sr.dim() == 3:
        sr, hr = sr.unsqueeze(0), hr.unsqueeze(0)
    if sr.dim() != 4 or sr.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W) or (3, H, W), got {tuple(sr.shape)}")
    # float64: the Y values are not on the 8-bit grid, and PSNRs near 50 dB need the precision
    sr_y, hr_y = (rgb_to_y(quantize(img.detach().to(torch.float64))) for img in (sr, hr))
    if crop_border > 0:
        sr_y = sr_y[..., crop_border:-crop_border, crop_border:-crop_border]
        hr_y = hr_y[..., crop_border:-crop_border, crop_border:-crop_border]
    return sr_y, hr_y


def _ssim(x: Tensor, y: Tensor, data_range: float) -> Tensor:
    """Per-image SSIM of (N, 1, H, W). Written out because torchmetrics reflect-pads and averages the border
    windows too, while BasicSR averages only windows that lie fully inside the image."""
    ax = torch.arange(SSIM_WINDOW, dtype=x.dtype, device=x.device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(ax**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    window = torch.outer(g, g)[None, None]

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, window)  # no padding: 'valid'

    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}  # torchvision's releases
BACKBONE_NAMES = {"alex": "AlexNet", "vgg": "VGG16"}


def lpips_or_none(sr: Tensor, hr: Tensor, weights_path: str | Path | None = None, net: str = "alex") -> float | None:
    """LPIPS of [0, 1] RGB images (mean over the batch), or None when no usable local weights exist (see
    lpips_unavailable)."""
    net, _ = _lpips_net(None if weights_path is None else str(weights_path), net)
    if net is None:
        return None
    if sr.dim() == 3:
        sr, hr = sr.unsqueeze(0), hr.unsqueeze(0)
    net = net.to(sr.device)
    with torch.no_grad():
        scores = net(sr.float().clamp(0, 1), hr.float().clamp(0, 1), normalize=True)
    return float(scores.mean())


def lpips_unavailable(weights_path: str | Path | None = None, net: str = "alex") -> str | None:
    """Why LPIPS cannot be computed offline with `weights_path`, or None when it can."""
    return _lpips_net(None if weights_path is None else str(weights_path), net)[1]


@functools.lru_cache(maxsize=4)
def _lpips_net(weights_path: str | None, backbone: str = "alex") -> tuple[nn.Module | None, str | None]:
    """torchmetrics' LPIPS network with its backbone (AlexNet or VGG16) loaded from a local torchvision checkpoint.

    torchmetrics' LearnedPerceptualImagePatchSimilarity always asks torchvision for the ImageNet backbone, which
    downloads; so the same network is built with a random backbone (pnet_rand) and the local file loaded into it.
    The LPIPS linear heads ship inside torchmetrics. Any failure yields a reason, never a number.
    """
    if weights_path is None:
        return None, f"no LPIPS weights given (needs torchvision's checkpoint {BACKBONE_FILES[backbone]})"
    path = Path(weights_path)
    if not path.is_file():
        return None, f"LPIPS weights {path} not found"
    try:
        from torchmetrics.functional.image.lpips import _NoTrainLpips

        net = _NoTrainLpips(net=backbone, pnet_rand=True)
    except Exception as err:  # noqa: BLE001 - a missing torchvision or a changed private API: report, do not guess
        return None, f"torchmetrics' LPIPS network cannot be built offline ({err})"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file means the same thing: no LPIPS
        return None, f"{path} is not a readable weights file ({err})"
    # torchmetrics keeps torchvision's layer indices inside its slices: slice2.3.weight <- features.3.weight
    wanted = {name: f"features.{name.split('.', 1)[1]}" for name in net.net.state_dict()}
    missing = [key for key in wanted.values() if key not in state]
    if missing:
        name = BACKBONE_NAMES[backbone]
        return None, f"{path} lacks {name} feature weights ({', '.join(missing[:4])}); expected torchvision's {name}"
    try:
        net.net.load_state_dict({name: state[key] for name, key in wanted.items()})
    except RuntimeError as err:
        return None, f"{path} does not fit {BACKBONE_NAMES[backbone]}: {' '.join(str(err).split())[:300]}"
    return net, None

"""Evaluation: Y-channel PSNR/SSIM (BasicSR convention), LPIPS when local weights exist, params/MACs/latency."""

from sdakd.evaluate.cost import count_params, latency_ms, macs
from sdakd.evaluate.metrics import lpips_or_none, lpips_unavailable, psnr_y, quantize, rgb_to_y, ssim_y

__all__ = [
    "count_params",
    "latency_ms",
    "lpips_or_none",
    "lpips_unavailable",
    "macs",
    "psnr_y",
    "quantize",
    "rgb_to_y",
    "ssim_y",
]

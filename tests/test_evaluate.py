"""Y-channel PSNR/SSIM on the BasicSR convention, LPIPS only with local weights, and the cost counters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d

from sdakd.evaluate import count_params, latency_ms, lpips_or_none, lpips_unavailable, macs, psnr_y, rgb_to_y, ssim_y


def constant(value: float, shape: tuple[int, ...] = (2, 3, 16, 16)) -> torch.Tensor:
    return torch.full(shape, value)


def test_rgb_to_y_spans_16_to_235() -> None:
    assert rgb_to_y(constant(0.0, (3, 2, 2))).unique().item() == pytest.approx(16.0)
    assert rgb_to_y(constant(1.0, (3, 2, 2))).unique().item() == pytest.approx(235.0)


def test_psnr_y_of_constant_images_matches_the_hand_count() -> None:
    # grey levels 153 and 143: Y differs by (65.481 + 128.553 + 24.966) * 10/255 = 2190/255 everywhere,
    # so PSNR = 20 log10(255 / (2190/255)) = 20 log10(65025/2190) = 29.45272... dB
    # (torchmetrics holds data_range in float32: agreement to ~2e-6 dB, not to the last digit)
    sr, hr = constant(153 / 255), constant(143 / 255)
    assert psnr_y(sr, hr, crop_border=0) == pytest.approx(29.452725, abs=1e-5)


def test_psnr_y_crop_border_removes_border_differences() -> None:
    hr = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sr = hr.clone()
    sr[..., :4, :] = 1 - sr[..., :4, :]
    sr[..., :, -4:] = 0
    assert math.isinf(psnr_y(sr, hr, crop_border=4))
    assert psnr_y(sr, hr, crop_border=0) < 20
    assert psnr_y(sr, hr, crop_border=3) < 30


def test_psnr_y_quantizes_to_8_bit_first() -> None:
    hr = torch.arange(10, 250, dtype=torch.float32).view(1, 1, 15, 16).expand(1, 3, 15, 16) / 255
    assert math.isinf(psnr_y(hr + 0.4 / 255, hr, crop_border=0))  # rounds back onto the same grey level
    # one grey level up everywhere: Y moves by 219/255
    assert psnr_y(hr + 0.6 / 255, hr, crop_border=0) == pytest.approx(20 * math.log10(255 * 255 / 219), abs=1e-5)


def test_psnr_y_is_the_mean_of_per_image_values() -> None:
    sr = torch.cat([constant(153 / 255, (1, 3, 8, 8)), constant(100 / 255, (1, 3, 8, 8))])
    hr = torch.cat([constant(143 / 255, (1, 3, 8, 8)), constant(90 / 255, (1, 3, 8, 8))])
    single = psnr_y(sr[:1], hr[:1], 0)
    assert psnr_y(sr, hr, 0) == pytest.approx(single)  # both differ by 10 levels
    assert psnr_y(sr[0], hr[0], 0) == pytest.approx(single)  # (3, H, W) input


def test_ssim_y_of_an_image_with_itself_is_one() -> None:
    img = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    assert ssim_y(img, img, crop_border=4) == pytest.approx(1.0, abs=1e-12)


def test_ssim_y_of_constant_images_matches_the_hand_count() -> None:
    # no variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) with a, b the Y values and C1 = (0.01 * 255)^2
    a, b = 16 + 219 * 153 / 255, 16 + 219 * 143 / 255
    c1 = (0.01 * 255) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim_y(constant(153 / 255), constant(143 / 255), crop_border=0) == pytest.approx(expected, abs=1e-12)


def basicsr_ssim(img: np.ndarray, img2: np.ndarray) -> float:
    """BasicSR's calculate_ssim on one Y plane in [0, 255], with scipy in place of cv2.filter2D + [5:-5, 5:-5]."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ax = np.arange(11) - 5
    kernel = np.exp(-(ax**2) / (2 * 1.5**2))
    kernel /= kernel.sum()
    window = np.outer(kernel, kernel)
    mu1, mu2 = correlate2d(img, window, mode="valid"), correlate2d(img2, window, mode="valid")
    sigma1_sq = correlate2d(img**2, window, mode="valid") - mu1**2
    sigma2_sq = correlate2d(img2**2, window, mode="valid") - mu2**2
    sigma12 = correlate2d(img * img2, window, mode="valid") - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * sigma12 + c2)) / ((mu1**2 + mu2**2 + c1) * (sigma1_sq + sigma2_sq + c2))
    return float(ssim_map.mean())


def test_ssim_y_matches_basicsr_reference() -> None:
    g = torch.Generator().manual_seed(2)
    hr = torch.rand(2, 3, 40, 36, generator=g)
    sr = (hr + 0.1 * torch.randn(2, 3, 40, 36, generator=g)).clamp(0, 1)
    crop = 4
    expected = []
    for s, h in zip(sr, hr):
        ys = [rgb_to_y((x.clamp(0, 1) * 255).round().double() / 255)[0, crop:-crop, crop:-crop].numpy() for x in (s, h)]
        expected.append(basicsr_ssim(*ys))
    assert ssim_y(sr, hr, crop_border=crop) == pytest.approx(float(np.mean(expected)), abs=1e-10)
    assert 0.2 < ssim_y(sr, hr, crop_border=crop) < 0.95


def test_metrics_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_y(torch.rand(3, 8, 8), torch.rand(3, 8, 9), 0)


def test_lpips_is_none_without_local_weights(tmp_path) -> None:
    img = torch.rand(1, 3, 32, 32)
    assert lpips_or_none(img, img) is None
    assert "no LPIPS weights" in lpips_unavailable(None)
    assert lpips_or_none(img, img, tmp_path / "absent.pth") is None
    assert "not found" in lpips_unavailable(tmp_path / "absent.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"something": torch.zeros(1)}, bad)
    assert lpips_or_none(img, img, bad) is None
    assert "lacks AlexNet feature weights" in lpips_unavailable(bad)


def test_lpips_loads_a_local_alexnet_checkpoint(tmp_path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    path = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)  # random weights, same layout
    assert lpips_unavailable(path) is None
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    assert lpips_or_none(a, a, path) == pytest.approx(0.0, abs=1e-6)
    assert lpips_or_none(a, b, path) > 0


def test_macs_of_a_conv_matches_the_hand_count() -> None:
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1)
    conv.train()
    # every output value: 3 in-channels x 3 x 3 taps; 8 x 16 x 16 output values
    assert macs(conv, (1, 3, 16, 16)) == 8 * 16 * 16 * 3 * 3 * 3
    assert conv.training  # the caller's mode is restored
    assert count_params(conv) == 8 * 3 * 3 * 3 + 8


def test_latency_is_a_positive_median() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    ms = latency_ms(net, (1, 3, 32, 32), warmup=1, repeats=3, device="cpu")
    assert isinstance(ms, float) and ms > 0

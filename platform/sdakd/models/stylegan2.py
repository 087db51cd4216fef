"""StyleGAN2's equalized-learning-rate layers, FIR resampling and discriminator, as GCFSR uses them.

Module and parameter names follow the official GCFSR/BasicSR code (`conv_body.1.conv2.1.weight`, ...), so its
checkpoints load unchanged. Networks here take [0, 1] images like the rest of the platform and map them to the
[-1, 1] range the official weights were trained on.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdakd.errors import SdakdError

FIR_TAPS = (1, 3, 3, 1)  # StyleGAN2's binomial low-pass around every resampling step
SIZES = (64, 128, 256, 512, 1024)


def check_size(out_size: int) -> None:
    if out_size not in SIZES:
        raise SdakdError(f"out_size must be one of {', '.join(map(str, SIZES))}, got {out_size}")


def channels(size: int, num_feat: int, channel_multiplier: int, narrow: float) -> int:
    """StyleGAN2's width at a resolution: num_feat up to 32x32, halving per doubling from 64x64 on (times
    channel_multiplier); everything times the `narrow` width factor."""
    full = num_feat if size <= 32 else num_feat * channel_multiplier * 32 // size
    return max(1, int(full * narrow))


def fused_lrelu(x: Tensor, bias: Tensor) -> Tensor:
    """Bias, LeakyReLU(0.2), then x sqrt(2) to keep unit variance (BasicSR's fused_leaky_relu)."""
    return F.leaky_relu(x + bias.view(1, -1, *[1] * (x.dim() - 2)), 0.2) * math.sqrt(2)


class BiasLeakyReLU(nn.Module):
    """The activation that carries its layer's bias (the official FusedLeakyReLU)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return fused_lrelu(x, self.bias)


class Blur(nn.Module):
    """Optional zero-insertion upsampling, padding, then the 4x4 FIR filter per channel (BasicSR's upfirdn2d).

    `gain` 4 restores the brightness that upsampling by zero insertion spreads over four pixels.
    """

    def __init__(self, pad: tuple[int, int], up: int = 1, gain: float = 1.0) -> None:
        super().__init__()
        taps = torch.tensor(FIR_TAPS, dtype=torch.float32)
        kernel = torch.outer(taps, taps)
        # a fixed filter: moves with the module, but is no parameter and no checkpoint entry
        self.register_buffer("kernel", kernel / kernel.sum() * gain, persistent=False)
        self.pad, self.up = pad, up

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if self.up > 1:
            x = F.pad(x.view(b, c, h, 1, w, 1), (0, self.up - 1, 0, 0, 0, self.up - 1))
            x = x.view(b, c, h * self.up, w * self.up)
        before, after = self.pad
        x = F.pad(x, (before, after, before, after))
        weight = self.kernel.flip(0, 1).to(x.dtype).expand(c, 1, *self.kernel.shape)
        return F.conv2d(x, weight, groups=c)


class EqualConv2d(nn.Module):
    """A conv whose weights are stored N(0, 1) and scaled by He's constant at run time (equalized learning rate)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale = 1 / math.sqrt(c_in * kernel**2)
        self.stride, self.padding = stride, padding
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)


class EqualLinear(nn.Module):
    """A linear layer with the equalized learning rate; `activate` applies the bias through BiasLeakyReLU's rule."""

    def __init__(self, c_in: int, c_out: int, bias_init: float = 0.0, activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in))
        self.bias = nn.Parameter(torch.full((c_out,), bias_init))
        self.scale = 1 / math.sqrt(c_in)
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight * self.scale)
        return fused_lrelu(out, self.bias) if self.activate else out + self.bias


def conv_layer(
    c_in: int, c_out: int, kernel: int, downsample: bool = False, bias: bool = True, activate: bool = True
) -> nn.Sequential:
    """[blur] -> equalized conv (stride 2 when downsampling) -> [bias + LeakyReLU]: the official ConvLayer, whose
    list indices are part of the checkpoint keys. An activated layer's bias lives in its activation."""
    layers: list[nn.Module] = []
    if downsample:
        pad = len(FIR_TAPS) - 2 + kernel - 1  # the blurred map must shrink to exactly half under the stride-2 conv
        layers.append(Blur(((pad + 1) // 2, pad // 2)))
    stride, padding = (2, 0) if downsample else (1, kernel // 2)
    layers.append(EqualConv2d(c_in, c_out, kernel, stride, padding, bias=bias and not activate))
    if activate:
        layers.append(BiasLeakyReLU(c_out))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """Two 3x3 convs (the second halves the size) plus a 1x1 downsampled skip, summed at unit variance."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = conv_layer(c_in, c_in, 3)
        self.conv2 = conv_layer(c_in, c_out, 3, downsample=True)
        self.skip = conv_layer(c_in, c_out, 1, downsample=True, bias=False, activate=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class StyleGAN2Discriminator(nn.Module):
    """StyleGAN2's residual D without minibatch-stddev (GCFSR's StyleGAN2Discriminator_no_std): one logit per image.

    `narrow` scales every width; the final linear layer is sized from the narrowed 4x4 map.
    """

    spec_names: ClassVar[dict[str, str]] = {"size": "out_size"}
    width_params: ClassVar[tuple[str, ...]] = ("narrow",)

    def __init__(self, out_size: int = 512, num_feat: int = 512, channel_multiplier: int = 2, narrow: float = 1.0):
        super().__init__()
        check_size(out_size)
        self.out_size = out_size
        self.num_in_ch = 3

        def width(size: int) -> int:
            return channels(size, num_feat, channel_multiplier, narrow)

        body: list[nn.Module] = [conv_layer(3, width(out_size), 1)]
        sizes = [out_size >> i for i in range(int(math.log2(out_size)) - 1)]  # out_size ... 4
        body += [ResBlock(width(size), width(size // 2)) for size in sizes[:-1]]
        self.conv_body = nn.Sequential(*body)
        self.final_conv = conv_layer(width(4), width(4), 3)
        self.final_linear = nn.Sequential(EqualLinear(width(4) * 16, width(4), activate=True), EqualLinear(width(4), 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.out_size, self.out_size):
            # the final linear layer reads a fixed 4x4 map: other sizes (DCD's phi_D on connector maps of decoder
            # taps at 16x16, 32x32, ...) are resampled to the size this D judges
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        out = self.final_conv(self.conv_body(x * 2 - 1))
        return self.final_linear(out.flatten(1))

"""Real-ESRGAN's U-Net discriminator with spectral norm: a per-pixel real/fake logit map."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from sdakd.errors import SdakdError


def sn_conv(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Module:
    # parametrization API; weights.py maps its keys to the legacy weight_orig/_u/_v of official checkpoints
    return spectral_norm(nn.Conv2d(c_in, c_out, kernel, stride, 1, bias=False))


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class UNetDiscriminatorSN(nn.Module):
    """Three stride-2 convs down, three bilinear-x2 convs up with skips, two refining convs, 1-channel head."""

    width_params: ClassVar[tuple[str, ...]] = ("num_feat",)

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        f = num_feat
        self.num_in_ch = num_in_ch
        self.skip_connection = skip_connection
        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        self.conv1 = sn_conv(f, f * 2, 4, 2)
        self.conv2 = sn_conv(f * 2, f * 4, 4, 2)
        self.conv3 = sn_conv(f * 4, f * 8, 4, 2)
        self.conv4 = sn_conv(f * 8, f * 4, 3, 1)
        self.conv5 = sn_conv(f * 4, f * 2, 3, 1)
        self.conv6 = sn_conv(f * 2, f, 3, 1)
        self.conv7 = sn_conv(f, f, 3, 1)
        self.conv8 = sn_conv(f, f, 3, 1)
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise SdakdError(f"UNetDiscriminatorSN needs height and width divisible by 8, got {tuple(x.shape[-2:])}")
        x0 = lrelu(self.conv0(x))
        x1 = lrelu(self.conv1(x0))
        x2 = lrelu(self.conv2(x1))
        x3 = lrelu(self.conv3(x2))
        x4 = lrelu(self.conv4(up(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = lrelu(self.conv5(up(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = lrelu(self.conv6(up(x5)))
        if self.skip_connection:
            x6 = x6 + x0
        out = lrelu(self.conv7(x6))
        out = lrelu(self.conv8(out))
        return self.conv9(out)

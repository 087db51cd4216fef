"""Real-ESRGAN's SRVGGNetCompact: a plain conv stack at LR, PixelShuffle, plus the nearest-upsampled input."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sdakd.errors import SdakdError
from sdakd.models.taps import pick_every

ACTIVATIONS = ("prelu", "relu", "lrelu")


def activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU()
    if act_type == "lrelu":
        return nn.LeakyReLU(0.1)
    raise SdakdError(f"unknown act_type {act_type!r}; known: {', '.join(ACTIVATIONS)}")


class SRVGGNetCompact(nn.Module):
    """`body` alternates conv and activation (official key names body.0.weight, body.1.weight, ...)."""

    # How the config's generic spec (scale, depth) maps onto this class's arguments.
    spec_names: ClassVar[dict[str, str]] = {"scale": "upscale", "depth": "num_conv"}
    width_params: ClassVar[tuple[str, ...]] = ("num_feat",)

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
        act_type: str = "prelu",
    ) -> None:
        super().__init__()
        self.num_in_ch = num_in_ch
        self.upscale = upscale
        layers = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), activation(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale**2, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return self.upsampler(out) + F.interpolate(x, scale_factor=self.upscale, mode="nearest")

    def depth_taps(self) -> list[str]:
        """Every activation output (odd body indices), shallow to deep."""
        return [f"body.{i}" for i in range(1, len(self.body) - 1, 2)]

    def tap_points(self, every: int = 1) -> list[str]:
        """The activation after every `every`-th conv, the last always included."""
        return pick_every(self.depth_taps(), every)

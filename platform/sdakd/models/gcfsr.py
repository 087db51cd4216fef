"""GCFSR (He et al., CVPR 2022), the SDAKD paper's second teacher: generative, controllable face SR.

The input is the LR face bicubic-upsampled back to `out_size`; `cond` is each sample's upscaling factor.
A conv encoder takes the input down to 16x16, where its map yields the style codes of a StyleGAN2 decoder that
grows back to `out_size` (modulated convs, noise, ToRGB skips). At each resolution the encoder's feature enters the
decoder as a shift, weighed against the decoder's own feature by two scales that linear maps of the factor produce:
the factor decides how much the output follows the input.

Module names follow the official gcfsr_arch.py, so its `params_ema` checkpoints load. The model takes and returns
[0, 1] images and works internally on the [-1, 1] range the official weights expect.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdakd.errors import SdakdError
from sdakd.models.stylegan2 import BiasLeakyReLU, Blur, EqualLinear, channels, check_size, conv_layer
from sdakd.models.taps import pick_every


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated conv: per sample, the weights times a style-derived scale per input channel, then
    (with `demodulate`) renormalized per output channel; the batch runs as one grouped conv."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, num_style_feat: int, demodulate: bool = True, upsample: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, c_out, c_in, kernel, kernel))
        self.modulation = EqualLinear(num_style_feat, c_in, bias_init=1.0)
        self.scale = 1 / math.sqrt(c_in * kernel**2)
        self.demodulate = demodulate
        # the stride-2 transposed 3x3 conv leaves a (2h + 1)-sided map; this blur brings it to 2h
        self.smooth = Blur((1, 1), gain=4.0) if upsample else None

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        b, c, h, w = x.shape
        weight = self.scale * self.weight * self.modulation(style).view(b, 1, c, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4), keepdim=True) + 1e-8)
        c_out, k = weight.shape[1], weight.shape[-1]
        x = x.reshape(1, b * c, h, w)
        if self.smooth is not None:
            out = F.conv_transpose2d(x, weight.transpose(1, 2).reshape(b * c, c_out, k, k), stride=2, groups=b)
            return self.smooth(out.view(b, c_out, *out.shape[-2:]))
        out = F.conv2d(x, weight.view(b * c_out, c, k, k), padding=k // 2, groups=b)
        return out.view(b, c_out, h, w)


class StyleConv(nn.Module):
    """Modulated 3x3 conv, per-pixel noise with a learned strength, [GCFSR's encoder shift], bias + LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, num_style_feat: int, upsample: bool = False) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(c_in, c_out, 3, num_style_feat, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.activate = BiasLeakyReLU(c_out)
        self.out_channels = c_out

    def forward(
        self,
        x: Tensor,
        style: Tensor,
        noise: torch.Generator | None,
        scales: tuple[Tensor, Tensor] | None = None,
        shift: Tensor | None = None,
    ) -> Tensor:
        out = self.modulated_conv(x, style)
        b, _, h, w = out.shape
        out = out + self.weight * torch.randn(b, 1, h, w, generator=noise, device=out.device, dtype=out.dtype)
        if shift is not None:
            # out * s1 + shift * s2 with (s1, s2) scaled to unit length: a per-channel mix of decoder and encoder
            s1, s2 = scales
            norm = torch.rsqrt(s1**2 + s2**2 + 1e-8)
            out = out * (s1 * norm).view(b, -1, 1, 1) + shift * (s2 * norm).view(b, -1, 1, 1)
        return self.activate(out)


class ToRGB(nn.Module):
    """A 1x1 modulated conv to RGB (no demodulation), added to the upsampled RGB of the level below."""

    def __init__(self, c_in: int, num_style_feat: int, upsample: bool = True) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(c_in, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.upsample = Blur((2, 1), up=2, gain=4.0) if upsample else None

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.modulated_conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


class GCFSR(nn.Module):
    """GCFSR generator at `out_size` (64 to 1024); every width times `narrow` (students use narrow < 1).

    `num_feat` is the width up to 32x32 (512 in the paper), halving per doubling above 64x64 with
    `channel_multiplier` 2 as the official training config. `cond_norm` divides the factor (official: 64).
    """

    # How the config's generic spec maps onto this class's arguments: only the output side; the depth follows it.
    spec_names: ClassVar[dict[str, str]] = {"size": "out_size"}
    width_params: ClassVar[tuple[str, ...]] = ("narrow",)
    # Official checkpoints also hold StyleGAN2's fixed-noise buffers, which GCFSR never reads (their shapes do not
    # even fit its resolutions); load_weights drops them.
    checkpoint_unused: ClassVar[tuple[str, ...]] = ("noises.",)

    def __init__(
        self,
        out_size: int = 512,
        num_feat: int = 512,
        num_style_feat: int = 512,
        channel_multiplier: int = 2,
        narrow: float = 1.0,
        cond_norm: float = 64.0,
    ) -> None:
        super().__init__()
        check_size(out_size)
        self.out_size, self.cond_norm, self.num_in_ch = out_size, cond_norm, 3

        def width(size: int) -> int:
            return channels(size, num_feat, channel_multiplier, narrow)

        sizes = [16 << i for i in range(int(math.log2(out_size)) - 3)]  # 16, 32, ..., out_size
        # encoder, out_size down to 16x16
        self.conv_body_first = conv_layer(3, width(out_size), 3)
        self.conv_body_down = nn.ModuleList(
            conv_layer(width(size), width(size // 2), 3, downsample=True) for size in reversed(sizes[1:])
        )
        # style codes from the 16x16 map taken down to 4x4; the linear layer is sized from that map (the official
        # code hard-codes 2*4*512 inputs, which fits narrow=1 only)
        self.final_conv = conv_layer(width(16), width(16), 3)
        self.final_down1 = conv_layer(width(16), width(8), 3, downsample=True)
        code_channels = max(1, width(4) // 2)
        self.final_down2 = conv_layer(width(8), code_channels, 3, downsample=True)
        self.num_latent = 2 * len(sizes)
        self.final_linear = EqualLinear(code_channels * 16, num_style_feat * self.num_latent, activate=True)
        # per resolution, out_size first as the official lists: the factor's two scales and the encoder's shift
        self.condition_scale1 = nn.ModuleList(EqualLinear(1, width(s), bias_init=1.0) for s in reversed(sizes))
        self.condition_scale2 = nn.ModuleList(EqualLinear(1, width(s), bias_init=1.0) for s in reversed(sizes))
        self.condition_shift = nn.ModuleList(conv_layer(width(s), width(s), 3, activate=False) for s in reversed(sizes))
        # StyleGAN2 decoder, 16x16 up to out_size: per level an upsampling conv, a shifted conv, a ToRGB
        self.style_conv1 = StyleConv(width(16), width(16), num_style_feat)
        self.to_rgb1 = ToRGB(width(16), num_style_feat, upsample=False)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for size in sizes[1:]:
            self.style_convs.append(StyleConv(width(size // 2), width(size), num_style_feat, upsample=True))
            self.style_convs.append(StyleConv(width(size), width(size), num_style_feat))
            self.to_rgbs.append(ToRGB(width(size), num_style_feat))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """`x` (B, 3, out_size, out_size) in [0, 1]; `cond` (B,) upscaling factors, or None for blind use (the factor
        taken as cond_norm, i.e. the official blind variant's in_size = 1)."""
        b = x.shape[0]
        if x.shape[-2:] != (self.out_size, self.out_size):
            raise SdakdError(
                f"GCFSR takes the LR upsampled back to out_size={self.out_size}, got {tuple(x.shape[-2:])} "
                "(train it with data.scales set, which makes the loader do that)"
            )
        in_size = x.new_ones(b, 1) if cond is None else cond.to(x.dtype).view(b, 1) / self.cond_norm
        feat = self.conv_body_first(x * 2 - 1)
        shifts = [self.condition_shift[0](feat)]
        for down, shift in zip(self.conv_body_down, self.condition_shift[1:]):
            feat = down(feat)
            shifts.append(shift(feat))
        scales = [(s1(in_size), s2(in_size)) for s1, s2 in zip(self.condition_scale1, self.condition_scale2)]
        shifts, scales = shifts[::-1], scales[::-1]  # decoder order: 16x16 first
        codes = self.final_down2(self.final_down1(feat)).flatten(1)
        latent = self.final_linear(codes).view(b, self.num_latent, -1)
        # training draws fresh noise as the official code; eval mode draws the same noise on every call, so that
        # validation scores and a frozen teacher's targets are deterministic
        noise = None if self.training else torch.Generator(x.device).manual_seed(0)

        out = self.style_conv1(self.final_conv(feat), latent[:, 0], noise, scales[0], shifts[0])
        rgb = self.to_rgb1(out, latent[:, 1])
        ups, convs = self.style_convs[::2], self.style_convs[1::2]
        for level, (up, conv, to_rgb) in enumerate(zip(ups, convs, self.to_rgbs), start=1):
            i = 2 * level - 1  # each level's ToRGB shares its code with the next level's first conv
            out = up(out, latent[:, i], noise)
            out = conv(out, latent[:, i + 1], noise, scales[level], shifts[level])
            rgb = to_rgb(out, latent[:, i + 2], rgb)
        return (rgb + 1) / 2

    def depth_taps(self) -> list[str]:
        """The decoder's feature at each resolution, 16x16 up to out_size (after the encoder's shift entered)."""
        return ["style_conv1"] + [f"style_convs.{i}" for i in range(1, len(self.style_convs), 2)]

    def tap_points(self, every: int = 1) -> list[str]:
        """Every `every`-th resolution's decoder feature, out_size always included. Teacher and student share the
        resolutions, so `pair_taps` pairs them one to one."""
        return pick_every(self.depth_taps(), every)

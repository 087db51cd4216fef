"""Perceptual loss: L1 between pre-activation VGG19 features (BasicSR/Real-ESRGAN layers), through timm.

Weights come only from a local file (`loss.perceptual.vgg_weights`); without one the VGG is randomly
initialised, which is logged and recorded in the run's metadata, never silently passed off as pretrained.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from sdakd.errors import SdakdError

log = logging.getLogger("sdakd")

# Index of each conv inside torchvision/timm `vgg19.features`; features are taken before the ReLU (as ESRGAN).
VGG19_CONVS = {
    "conv1_1": 0, "conv1_2": 2,
    "conv2_1": 5, "conv2_2": 7,
    "conv3_1": 10, "conv3_2": 12, "conv3_3": 14, "conv3_4": 16,
    "conv4_1": 19, "conv4_2": 21, "conv4_3": 23, "conv4_4": 25,
    "conv5_1": 28, "conv5_2": 30, "conv5_3": 32, "conv5_4": 34,
}  # fmt: skip
# timm's features_only stages end at these indices (post-ReLU), so `out_indices` truncates the net for us.
_STAGE_ENDS = (3, 8, 17, 26, 35)
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.layers = dict(cfg.layers)
        self.pretrained = cfg.vgg_weights is not None
        last = max(VGG19_CONVS[name] for name in self.layers)
        last_stage = next(i for i, end in enumerate(_STAGE_ENDS) if end >= last)
        out_indices = tuple(range(last_stage + 1))
        if self.pretrained:
            path = Path(cfg.vgg_weights)
            if not path.is_file():
                raise SdakdError(f"loss.perceptual.vgg_weights: file {path} does not exist")
            vgg = timm.create_model(
                "vgg19", pretrained=True, features_only=True, out_indices=out_indices,
                pretrained_cfg_overlay={"file": str(path)},
            )
        else:
            log.warning("perceptual loss: no loss.perceptual.vgg_weights given, VGG19 is randomly initialised")
            vgg = timm.create_model("vgg19", pretrained=False, features_only=True, out_indices=out_indices)
        blocks = list(vgg.children())[: last + 1]
        for block in blocks:
            if isinstance(block, nn.ReLU):
                block.inplace = False  # an in-place ReLU would overwrite the pre-activation feature we keep
        self.vgg = nn.Sequential(*blocks).eval().requires_grad_(False)
        self._taps = {VGG19_CONVS[name]: name for name in self.layers}
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # the VGG always runs in eval mode

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x - self.mean) / self.std
        found = {}
        for index, block in enumerate(self.vgg):
            x = block(x)
            if index in self._taps:
                found[self._taps[index]] = x
        return found

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        fs = self.features(sr)
        with torch.no_grad():
            fh = self.features(hr)
        return sum(w * F.l1_loss(fs[name], fh[name]) for name, w in self.layers.items())

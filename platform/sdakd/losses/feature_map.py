"""SDAKD's adapted feature-map distillation: a 1x1-conv MLP per tap maps student channels to teacher channels."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class FeatureAdapters(nn.ModuleList):
    """One `W2 . ReLU(W1 . F_s)` adapter per tap pair; trained with the student, dropped at export."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], hidden: int | None = None):
        super().__init__(
            nn.Sequential(
                nn.Conv2d(cs, hidden or ct, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden or ct, ct, 1),
            )
            for cs, ct in zip(student_channels, teacher_channels, strict=True)
        )


def feature_map_loss(
    adapters: nn.ModuleList, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Sum over taps of mean ||MLP(F_s) - F_t||^2."""
    terms = [
        torch.mean((adapter(fs) - ft.detach()) ** 2)
        for adapter, fs, ft in zip(adapters, student, teacher, strict=True)
    ]
    return torch.stack(terms).sum()

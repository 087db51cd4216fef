"""What the engine needs of a method: its nets, its stages, and the loss terms of one step.

`sdakd.methods.base.Method` implements it; the engine sees nothing else of a method (no names, no config).
"""

from __future__ import annotations

from typing import Mapping, Protocol

import torch
from torch import nn

from sdakd.engine.stage import Stage


class StepOutputs(Protocol):
    """One batch's outputs, computed lazily and shared by the G and D terms of a step."""

    @property
    def sr(self) -> torch.Tensor: ...


class StagedMethod(Protocol):
    nets: nn.ModuleDict
    g_nets: tuple[str, ...]  # which nets the G optimizer trains (names absent from `nets` are skipped)
    d_nets: tuple[str, ...]  # which nets the D optimizer trains

    def stages(self) -> list[Stage]: ...

    def step(self, batch: Mapping[str, torch.Tensor]) -> StepOutputs: ...

    def generator_terms(self, step: StepOutputs, stage: Stage) -> dict[str, torch.Tensor]: ...

    def discriminator_terms(self, step: StepOutputs, stage: Stage) -> dict[str, torch.Tensor]: ...

    def modules_for(self, names: tuple[str, ...]) -> list[nn.Module]: ...

"""The teacher: a frozen wrapper (eval mode, no grad, outside DDP) around a generator and its discriminator (none
when the teacher only scores a student that trains without it)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from sdakd.models import FeatureTaps, generate


class Teacher:
    def __init__(
        self, g: nn.Module, d: nn.Module | None, identity: str, source: str, d_source: str | None = None
    ) -> None:
        self.g = g.eval().requires_grad_(False)
        self.d = d.eval().requires_grad_(False) if d is not None else None
        self.identity = identity  # what the teacher is: a weights file, a named teacher, or a pretrain cache key
        self.source = source  # the G's: "weights" | "pretrained-here"
        # the D's, where it differs: "trained-here-against-teacher" (its G came from weights, it did not)
        self.d_source = (d_source or source) if d is not None else None

    def to(self, device: torch.device | str) -> "Teacher":
        self.g.to(device)
        if self.d is not None:
            self.d.to(device)
        return self

    @torch.no_grad()
    def sr(
        self, lr: torch.Tensor, taps: Sequence[str] = (), cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher output and, for distillation, the named intermediate features (hooks live only for this call,
        so several methods can share one teacher). `cond`: per-sample conditioning, for generators that take it."""
        if not taps:
            return generate(self.g, lr, cond), {}
        with FeatureTaps(self.g, list(taps)) as hooks:
            out = generate(self.g, lr, cond)
            return out, dict(hooks.features)

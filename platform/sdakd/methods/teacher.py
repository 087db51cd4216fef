"""Teacher pretraining as a method (not user-selectable): G with L1 + perceptual, then its D on GT vs G."""

from __future__ import annotations

from torch import nn

from sdakd.config import ExperimentConfig
from sdakd.engine.stage import Stage
from sdakd.methods.base import Method


class PretrainTeacher(Method):
    name = "teacher_pretrain"
    uses_teacher = False

    def __init__(self, cfg: ExperimentConfig, generator: nn.Module, discriminator: nn.Module) -> None:
        self._nets = {"student_g": generator, "d": discriminator}
        super().__init__(cfg, None)

    def build(self) -> dict[str, nn.Module]:
        return self._nets

    def stages(self) -> list[Stage]:
        p = self.cfg.teacher.pretrain
        return [
            Stage("teacher_g", p.iters, g_loss={"pixel": 1.0, "perceptual": p.perceptual_weight}),
            Stage("teacher_d", p.d_iters, d_loss={"real": 1.0, "fake": 1.0}),
        ]

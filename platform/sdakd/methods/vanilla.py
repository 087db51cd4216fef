"""vanilla: the student trained as a GAN from scratch, no teacher.

It runs the three stages every method shares (`Method.three_stages`); with no distillation terms, its s2 is s1
plus the D warm-up.
"""

from __future__ import annotations

from torch import nn

from sdakd.engine.stage import Stage
from sdakd.methods.base import REAL_FAKE, GANOptions, Method
from sdakd.methods.registry import METHODS
from sdakd.models.from_config import discriminator


@METHODS.register("vanilla")
class Vanilla(Method):
    Options = GANOptions
    tunable = {"loss.gan.weight": {"type": "loguniform", "low": 1.0e-4, "high": 0.1}}
    uses_teacher = False  # the pipeline builds no teacher, and `Step` refuses to reach one

    def build(self) -> dict[str, nn.Module]:
        return super().build() | {"d": discriminator(self.cfg, self.cfg.student_d.width)}

    def stages(self) -> list[Stage]:
        gan = {"gan": self.cfg.loss.gan.weight}
        return self.three_stages({}, gan, REAL_FAKE, self.options.warm_d)

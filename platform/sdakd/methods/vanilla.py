"""vanilla: the student trained as a GAN from scratch, no teacher; and the three-stage schedule all baselines share.

Every method runs stages s1, s2, s3 with the config's `stages.s*.iters`, so all get the same generator steps
and are evaluated at the same points: s1 supervised only; s2 adds the method's distillation terms (and trains its
D(s) if `warm_d`, as SDAKD warms its student D); s3 adds the GAN terms. Vanilla has no distillation terms, so its
s2 is s1 plus the D warm-up.
"""

from __future__ import annotations

from typing import Mapping

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from sdakd.engine.stage import Stage
from sdakd.methods.base import Method, discriminator
from sdakd.methods.registry import METHODS

REAL_FAKE = {"real": 1.0, "fake": 1.0}


class GANOptions(BaseModel):
    """Knobs of every method that trains its own adversary."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    warm_d: bool = Field(True, description="train the D(s) in stage 2, before they feed the generator in stage 3")


def three_stages(
    method: Method,
    distill: Mapping[str, float],
    gan: Mapping[str, float],
    d_loss: Mapping[str, float],
    warm_d: bool,
) -> list[Stage]:
    """s1 supervised; s2 + `distill` (D terms `d_loss` too if `warm_d`); s3 + `gan`, with `d_loss`."""
    stages = method.cfg.stages
    supervised = method.supervised()
    distilled = {**supervised, **distill}
    return [
        Stage("s1", stages.s1.iters, g_loss=supervised),
        Stage("s2", stages.s2.iters, g_loss=distilled, d_loss=d_loss if warm_d else {}),
        Stage("s3", stages.s3.iters, g_loss={**distilled, **gan}, d_loss=d_loss),
    ]


@METHODS.register("vanilla")
class Vanilla(Method):
    name = "vanilla"
    Options = GANOptions
    uses_teacher = False  # the pipeline builds no teacher, and `Step` refuses to reach one

    def build(self) -> dict[str, nn.Module]:
        return super().build() | {"d": discriminator(self.cfg, self.cfg.student_d.width)}

    def stages(self) -> list[Stage]:
        gan = {"gan": self.cfg.loss.gan.weight}
        return three_stages(self, {}, gan, REAL_FAKE, self.options.warm_d)

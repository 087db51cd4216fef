"""AKDG: adversarial KD with a distillation discriminator.

Next to the student D (GT real vs student output fake), a distillation D `d_kd` learns the teacher's output
(real) vs the student's output (fake) for the same LR input; the student's GAN term is
L_adv(D_S) + lambda_kd * L_adv(D_KD), logged as the two terms `gan` and `gan_kd`.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from sdakd.engine.stage import Stage
from sdakd.methods.base import REAL_FAKE, GANOptions, Method, Step
from sdakd.methods.registry import METHODS
from sdakd.models.from_config import discriminator


class AKDGOptions(GANOptions):
    lambda_kd: float = Field(1.0, ge=0, description="weight of D_KD's GAN term relative to the student D's")
    d_kd_width: float | None = Field(None, gt=0, le=1, description="D_KD width factor; None = student_d.width")


@METHODS.register("akdg")
class AKDG(Method):
    Options = AKDGOptions
    tunable = {
        "methods.akdg.lambda_kd": {"type": "loguniform", "low": 0.1, "high": 10.0},
        "loss.gan.weight": {"type": "loguniform", "low": 1.0e-4, "high": 0.1},
    }

    def build(self) -> dict[str, nn.Module]:
        student_width = self.cfg.student_d.width
        return super().build() | {
            "d": discriminator(self.cfg, student_width),
            "d_kd": discriminator(self.cfg, self.options.d_kd_width or student_width),
        }

    def stages(self) -> list[Stage]:
        w_gan = self.cfg.loss.gan.weight
        gan = {"gan": w_gan, "gan_kd": w_gan * self.options.lambda_kd}
        d_loss = REAL_FAKE | {"kd_real": 1.0, "kd_fake": 1.0}
        return self.three_stages({}, gan, d_loss, self.options.warm_d)

    def g_gan_kd(self, step: Step) -> torch.Tensor:
        return self.adversarial.generator(self.nets["d_kd"](step.sr))

    def d_kd_real(self, step: Step) -> torch.Tensor:
        return self.adversarial.real(self.nets["d_kd"](step.teacher_sr))

    def d_kd_fake(self, step: Step) -> torch.Tensor:
        return self.adversarial.fake(self.nets["d_kd"](step.sr.detach()))

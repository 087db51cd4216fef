"""SDAKD: a capacity-matched student discriminator, three stages, MLP-adapted feature-map distillation.

Stage 1 supervised only; stage 2 adds FM-MLP distillation and warms the student D up (it does not yet feed the
generator); stage 3 adds the student D's GAN term. `adversary: teacher` is the ablation SDAKD argues against.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from sdakd.engine.stage import Stage
from sdakd.losses import FeatureAdapters, feature_map_loss
from sdakd.methods.base import Method, Step, discriminator
from sdakd.methods.registry import METHODS
from sdakd.models import FeatureTaps, feature_channels, pair_taps


class SDAKDOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    adversary: Literal["student", "teacher"] = "student"
    teacher_d: Literal["finetune", "frozen"] = Field(
        "finetune", description="with adversary=teacher: keep training a copy of the teacher D, or freeze it"
    )
    warm_student_d: bool = Field(True, description="train the adversary D in stage 2 (it feeds G only in stage 3)")
    adapter_hidden: int | None = Field(None, ge=1, description="MLP hidden width; None = teacher channels")


@METHODS.register("sdakd")
class SDAKD(Method):
    name = "sdakd"
    Options = SDAKDOptions

    def build(self) -> dict[str, nn.Module]:
        nets = super().build()
        student, teacher = nets["student_g"], self.teacher.g
        pairs = pair_taps(teacher, student, self.cfg.loss.fm.every)
        self.teacher_tap_names = [t for t, _ in pairs]
        self.student_tap_names = [s for _, s in pairs]
        self.student_taps = FeatureTaps(student, self.student_tap_names)
        nets["adapters"] = FeatureAdapters(
            [feature_channels(student, s) for _, s in pairs],
            [feature_channels(teacher, t) for t, _ in pairs],
            self.options.adapter_hidden,
        )
        if self.options.adversary == "student":
            nets["d"] = discriminator(self.cfg, self.cfg.student_d.width)
        elif self.options.teacher_d == "finetune":
            nets["d"] = copy.deepcopy(self.teacher.d).train().requires_grad_(True)
        return nets

    def adversary(self) -> nn.Module:
        return self.nets["d"] if "d" in self.nets else self.teacher.d

    def stages(self) -> list[Stage]:
        cfg, opts = self.cfg, self.options
        supervised = self.supervised()
        distilled = supervised | {"fm": cfg.loss.fm.weight}
        d_trains = {"real": 1.0, "fake": 1.0} if "d" in self.nets else {}
        return [
            Stage("s1", cfg.stages.s1.iters, g_loss=supervised),
            Stage("s2", cfg.stages.s2.iters, g_loss=distilled, d_loss=d_trains if opts.warm_student_d else {}),
            Stage("s3", cfg.stages.s3.iters, g_loss=distilled | {"gan": cfg.loss.gan.weight}, d_loss=d_trains),
        ]

    def g_fm(self, step: Step) -> torch.Tensor:
        step.sr  # the student forward fills its taps
        student = [step.student_features[name] for name in self.student_tap_names]
        teacher = [step.teacher_features[name] for name in self.teacher_tap_names]
        return feature_map_loss(self.nets["adapters"], student, teacher)

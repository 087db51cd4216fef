"""SDAKD: a capacity-matched student discriminator, three stages, MLP-adapted feature-map distillation.

Stage 1 supervised only; stage 2 adds FM-MLP distillation and warms the student D up (it does not yet feed the
generator); stage 3 adds the student D's GAN term. `adversary: teacher` is the ablation SDAKD argues against.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from sdakd.engine.stage import Stage
from sdakd.losses import FeatureAdapters, feature_map_loss
from sdakd.methods.base import REAL_FAKE, GANOptions, Method, Step
from sdakd.methods.registry import METHODS
from sdakd.models import feature_channels
from sdakd.models.from_config import discriminator


class SDAKDOptions(GANOptions):
    adversary: Literal["student", "teacher"] = "student"
    teacher_d: Literal["finetune", "frozen"] = Field(
        "finetune", description="with adversary=teacher: keep training a copy of the teacher D, or freeze it"
    )
    adapter_hidden: int | None = Field(None, ge=1, description="MLP hidden width; None = teacher channels")

    @model_validator(mode="before")
    @classmethod
    def _renamed_warm_switch(cls, data: Any) -> Any:
        """`warm_student_d` (configs and MLflow params written before every method said `warm_d`) still loads."""
        if not isinstance(data, dict) or "warm_student_d" not in data:
            return data
        data = dict(data)
        old = data.pop("warm_student_d")
        if data.setdefault("warm_d", old) != old:
            raise ValueError(f"warm_student_d={old} contradicts warm_d={data['warm_d']}; keep only warm_d")
        warnings.warn(
            "methods.sdakd.warm_student_d is deprecated: write methods.sdakd.warm_d (the switch every method with "
            "its own D shares); it is read as warm_d for now",
            FutureWarning,
            stacklevel=2,
        )
        return data


@METHODS.register("sdakd")
class SDAKD(Method):
    Options = SDAKDOptions
    tunable = {
        "loss.fm.weight": {"type": "loguniform", "low": 0.01, "high": 10.0},
        "loss.gan.weight": {"type": "loguniform", "low": 1.0e-4, "high": 0.1},
        "student_d.width": {"type": "choice", "values": [0.125, 0.25, 0.5, 1.0]},
    }

    def build(self) -> dict[str, nn.Module]:
        nets = super().build()
        student, teacher = nets["student_g"], self.teacher.g
        pairs = self.tap_pairs(student, self.cfg.loss.fm.every)
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
        d_trains = REAL_FAKE if "d" in self.nets else {}  # a frozen teacher D trains in no stage
        gan = {"gan": self.cfg.loss.gan.weight}
        return self.three_stages({"fm": self.cfg.loss.fm.weight}, gan, d_trains, self.options.warm_d)

    def g_fm(self, step: Step) -> torch.Tensor:
        student = [step.student_features[name] for name in self.student_tap_names]
        teacher = [step.teacher_features[name] for name in self.teacher_tap_names]
        return feature_map_loss(self.nets["adapters"], student, teacher)

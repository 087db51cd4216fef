"""CRD: content relationship distillation between student and teacher outputs, against the frozen teacher D.

The output images are sliced into rows, columns and 32x32 patches; relational KD (RKD distance + 2 x angle)
matches how those items relate to each other in the student's output to how they do in the teacher's.
The official code freezes an online-trained teacher D; here the pretrained teacher D, frozen, is the adversary.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from sdakd.engine.stage import Stage
from sdakd.errors import SdakdError
from sdakd.losses import content_relation_loss
from sdakd.methods.base import Method, Step
from sdakd.methods.registry import METHODS


class CRDOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = Field(25.0, ge=0, description="weight of rows + columns + patches relational KD")
    patch: int = Field(32, ge=1, description="side of the non-overlapping patch items")
    subsample: int | None = Field(
        64, ge=3, description="items per set the N^3 angle term sees (evenly spaced); None = all"
    )


@METHODS.register("crd")
class CRD(Method):
    Options = CRDOptions
    tunable = {"methods.crd.weight": {"type": "loguniform", "low": 1.0, "high": 100.0}}

    def build(self) -> dict[str, nn.Module]:
        if self.cfg.data.gt_size < self.options.patch:
            raise SdakdError(
                f"methods.crd.patch={self.options.patch} is larger than the training crop data.gt_size="
                f"{self.cfg.data.gt_size}: no patch items"
            )
        return super().build()

    def adversary(self) -> nn.Module:
        return self.teacher.d

    def stages(self) -> list[Stage]:
        gan = {"gan": self.cfg.loss.gan.weight}
        return self.three_stages({"crd": self.options.weight}, gan, {}, warm_d=False)

    def g_crd(self, step: Step) -> torch.Tensor:
        opts = self.options
        return content_relation_loss(step.sr, step.teacher_sr, opts.patch, opts.subsample)

"""DCD: discriminator-cooperated feature-map distillation, with collaborative adversarial training.

Generator taps of teacher and student each pass a connector (1x1 conv, no bias -> BatchNorm -> ReLU) down to a
3-channel LR "image"; the discriminator's feature map phi_D (a forward hook on `phi_layer`) of the two must agree:
L_DCD = sum over taps of mean |phi_D(conn_T(F_T)) - phi_D(conn_S(F_S))|. The teacher's connectors are fixed random
projections; the student's train with it. One teacher-architecture D, trained from scratch on GT vs student
output, is both phi_D and the student's adversary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from sdakd.engine import unwrap
from sdakd.engine.stage import Stage
from sdakd.errors import SdakdError
from sdakd.methods.base import REAL_FAKE, GANOptions, Method, Step
from sdakd.methods.registry import METHODS
from sdakd.models import FeatureTaps, feature_channels
from sdakd.models.from_config import discriminator
from sdakd.models.group_batchnorm import GroupBatchNorm2d
from sdakd.models.taps import find_module


class DCDOptions(GANOptions):
    weight: float = Field(1.0, ge=0, description="weight of L_DCD")
    tap_every: int = Field(
        8, ge=1, description="tap every k-th student RRDB plus conv_body (8 on 23 blocks: DCD's four taps)"
    )
    connector_channels: int = Field(3, ge=1, description="connector outputs; must be the D's input channels")
    phi_layer: str = Field("conv8", description="D module whose output is phi_D (conv8: the penultimate, as DCD)")
    d_width: float = Field(1.0, gt=0, le=1, description="collaborative D width relative to the teacher D")
    phi_upsample: int | None = Field(
        None, ge=1, description="nearest-upsampling of connector maps before phi_D; None = the smallest power of 2 "
        "that makes their sides multiples of 8 (the U-Net D's need), i.e. 1 at LR 16 or 64, 2 at LR 12",
    )


def connectors(channels: list[int], out: int) -> nn.ModuleList:
    def connector(c_in: int) -> nn.Module:
        conv = nn.Conv2d(c_in, out, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        # BatchNorm over the worker group's whole batch: N DDP workers of batch B train as one of batch N*B
        return nn.Sequential(conv, GroupBatchNorm2d(out), nn.ReLU())

    return nn.ModuleList(connector(c) for c in channels)


def fitting_factor(height: int, width: int, multiple: int = 8) -> int:
    """The smallest power of 2 that scales both sides to multiples of `multiple` (the U-Net D's three stride-2
    convs need 8)."""
    factor = 1
    while (height * factor) % multiple or (width * factor) % multiple:
        factor *= 2
    return factor


@METHODS.register("dcd")
class DCD(Method):
    Options = DCDOptions
    tunable = {
        "methods.dcd.weight": {"type": "loguniform", "low": 1.0e-3, "high": 10.0},
        "loss.gan.weight": {"type": "loguniform", "low": 1.0e-4, "high": 0.1},
    }

    def build(self) -> dict[str, nn.Module]:
        opts = self.options
        nets = super().build()
        student, teacher = nets["student_g"], self.teacher.g
        self.tap_pairs(student, opts.tap_every)
        nets["connectors"] = connectors(
            [feature_channels(student, s) for s in self.student_tap_names], opts.connector_channels
        )
        # Fixed random projections: drawn from the seeded init like every net here, saved in checkpoints with
        # `nets`, and never trained (no grads; not in `g_nets`, so in no optimizer).
        nets["teacher_connectors"] = connectors(
            [feature_channels(teacher, t) for t in self.teacher_tap_names], opts.connector_channels
        ).requires_grad_(False)
        nets["d"] = d = discriminator(self.cfg, opts.d_width)
        find_module(d, opts.phi_layer)  # a typo fails here, not at the first stage-2 step
        if opts.connector_channels != d.num_in_ch:
            raise SdakdError(
                f"methods.dcd.connector_channels={opts.connector_channels}: phi_D reads connector outputs as images, "
                f"so it must equal the discriminator's {d.num_in_ch} input channels"
            )
        return nets

    def stages(self) -> list[Stage]:
        # The student's GAN term is Method.g_gan: the collaborative D judges the *student's* output. The public DCD
        # code feeds the teacher's output there by mistake (no gradient reaches the student); we follow the paper.
        gan = {"gan": self.cfg.loss.gan.weight}
        return self.three_stages({"dcd": self.options.weight}, gan, REAL_FAKE, self.options.warm_d)

    def phi(self, images: torch.Tensor) -> torch.Tensor:
        factor = self.options.phi_upsample or fitting_factor(*images.shape[-2:])
        if factor > 1:
            images = F.interpolate(images, scale_factor=factor, mode="nearest")
        # hooks go on the plain module, the call through any DDP wrapper
        with FeatureTaps(unwrap(self.nets["d"]), [self.options.phi_layer]) as taps:
            self.nets["d"](images)
        return taps.features[self.options.phi_layer]

    def g_dcd(self, step: Step) -> torch.Tensor:
        terms = []
        for t_name, s_name, t_conn, s_conn in zip(
            self.teacher_tap_names, self.student_tap_names, self.nets["teacher_connectors"], self.nets["connectors"]
        ):
            with torch.no_grad():
                teacher = t_conn(step.teacher_features[t_name])
            student = s_conn(step.student_features[s_name])
            # one D pass for both sides; the D holds no batch statistics, so items do not mix
            phi_t, phi_s = self.phi(torch.cat([teacher, student])).chunk(2)
            terms.append(F.l1_loss(phi_s, phi_t.detach()))
        return torch.stack(terms).sum()

"""What every method shares: the student, the supervised terms, the adversarial terms, and lazy step outputs.

A method subclasses `Method`, declares its stages as data (`stages()`), adds nets in `build()`, and writes each
loss term it names as a small `g_<term>` / `d_<term>` function. The engine calls only this interface.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from sdakd.config import ExperimentConfig
from sdakd.engine.stage import Stage
from sdakd.errors import SdakdError
from sdakd.losses import AdversarialLoss, PerceptualLoss
from sdakd.losses.adversarial import r1_penalty
from sdakd.models import FeatureTaps, discriminator_from_spec, generate, generator_from_spec
from sdakd.teacher import Teacher


class NoOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def sr_generator(cfg: ExperimentConfig, width: float = 1.0, depth: int | None = None) -> nn.Module:
    """The teacher's architecture at `width` (and `depth` blocks): teacher and students share one family."""
    t = cfg.teacher
    extra = {"num_grow_ch": t.num_grow_ch} if t.num_grow_ch is not None else {}
    return generator_from_spec(
        t.arch, scale=cfg.data.scale, depth=depth or t.num_block, size=cfg.data.gt_size, width=width,
        num_feat=t.num_feat, **extra,
    )


def student_generator(cfg: ExperimentConfig) -> nn.Module:
    return sr_generator(cfg, cfg.student.width, cfg.student.num_block)


def discriminator(cfg: ExperimentConfig, width: float) -> nn.Module:
    return discriminator_from_spec(
        cfg.teacher.d_arch, size=cfg.data.gt_size, width=width, num_feat=cfg.teacher.d_num_feat
    )


class Step:
    """One batch's outputs, computed at most once and shared by the G terms and the D terms."""

    def __init__(self, method: "Method", batch: dict[str, torch.Tensor]) -> None:
        self.method = method
        self.lr = batch["lr"]
        self.hr = batch["hr"]
        self.cond = batch.get("cond")  # per-sample conditioning (GCFSR's upscaling factors); absent otherwise

    @cached_property
    def sr(self) -> torch.Tensor:
        out = generate(self.method.nets["student_g"], self.lr, self.cond)
        taps = self.method.student_taps
        self.student_features = dict(taps.features) if taps else {}
        return out

    @cached_property
    def _teacher(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.method.teacher is None:
            raise SdakdError(f"method {self.method.name!r} asked for the teacher but declares uses_teacher=False")
        return self.method.teacher.sr(self.lr, self.method.teacher_tap_names, self.cond)

    @property
    def teacher_sr(self) -> torch.Tensor:
        return self._teacher[0]

    @property
    def teacher_features(self) -> dict[str, torch.Tensor]:
        return self._teacher[1]


class Method:
    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    uses_teacher: ClassVar[bool] = True
    # Which nets each optimizer trains; a name absent from `nets` is simply skipped.
    g_nets: ClassVar[tuple[str, ...]] = ("student_g", "adapters", "connectors")
    d_nets: ClassVar[tuple[str, ...]] = ("d", "d_kd")

    def __init__(self, cfg: ExperimentConfig, teacher: Teacher | None) -> None:
        if self.uses_teacher and teacher is None:
            raise SdakdError(f"method {self.name!r} needs a teacher")
        self.cfg = cfg
        self.options: Any = cfg.options
        self.teacher = teacher if self.uses_teacher else None
        self.student_taps: FeatureTaps | None = None
        self.teacher_tap_names: list[str] = []
        self.adversarial = AdversarialLoss(cfg.loss.gan.type)
        self.nets = nn.ModuleDict(self.build())
        self._check_terms()
        uses_perceptual = any("perceptual" in s.g_loss for s in self.stages())
        self.perceptual = PerceptualLoss(cfg.loss.perceptual) if uses_perceptual else None

    # ------------------------------------------------------------------ declared by each method
    def build(self) -> dict[str, nn.Module]:
        return {"student_g": student_generator(self.cfg)}

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def prefix_exempt_options(self, done: list[Stage]) -> frozenset[str]:
        """Option names (`methods.<name>.*`) that cannot change the result of the stages `done`: the stage-prefix
        cache leaves them out of those stages' key. Default: none, which is always safe."""
        return frozenset()

    # ------------------------------------------------------------------ used by the engine
    def step(self, batch: dict[str, torch.Tensor]) -> Step:
        return Step(self, batch)

    def generator_terms(self, step: Step, stage: Stage) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"g_{name}")(step) for name in stage.g_loss}

    def discriminator_terms(self, step: Step, stage: Stage) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"d_{name}")(step) for name in stage.d_loss}

    def modules_for(self, names: tuple[str, ...]) -> list[nn.Module]:
        return [self.nets[n] for n in names if n in self.nets]

    def to(self, device: torch.device | str) -> "Method":
        self.nets.to(device)
        if self.perceptual is not None:
            self.perceptual.to(device)
        return self

    def _check_terms(self) -> None:
        for stage in self.stages():
            for side, terms in (("g", stage.g_loss), ("d", stage.d_loss)):
                missing = [t for t in terms if not callable(getattr(self, f"{side}_{t}", None))]
                if missing:
                    raise SdakdError(f"method {self.name!r} stage {stage.name}: no {side}_<term> for {missing}")

    # ------------------------------------------------------------------ shared loss terms
    def supervised(self) -> dict[str, float]:
        loss = self.cfg.loss
        return {
            "pixel": loss.pixel.weight,
            "perceptual": loss.perceptual.weight,
            "teacher_output": loss.teacher_output.weight if self.uses_teacher else 0.0,
        }

    def g_pixel(self, step: Step) -> torch.Tensor:
        return F.l1_loss(step.sr, step.hr)

    def g_perceptual(self, step: Step) -> torch.Tensor:
        return self.perceptual(step.sr, step.hr)

    def g_teacher_output(self, step: Step) -> torch.Tensor:
        return F.l1_loss(step.sr, step.teacher_sr)

    def adversary(self) -> nn.Module:
        """The D whose verdict the student's GAN term uses."""
        return self.nets["d"]

    def g_gan(self, step: Step) -> torch.Tensor:
        return self.adversarial.generator(self.adversary()(step.sr))

    def d_real(self, step: Step) -> torch.Tensor:
        """D's loss on GT; with loss.r1.weight = gamma > 0 plus the R1 penalty gamma/2 E|grad D(GT)|^2, on every
        D step (StyleGAN2's lazy every-16-steps variant would need the step index, which terms do not see)."""
        gamma = self.cfg.loss.r1.weight
        hr = step.hr.detach().requires_grad_(gamma > 0)
        logits = self.nets["d"](hr)
        real = self.adversarial.real(logits)
        return real + gamma / 2 * r1_penalty(logits, hr) if gamma > 0 else real

    def d_fake(self, step: Step) -> torch.Tensor:
        return self.adversarial.fake(self.nets["d"](step.sr.detach()))

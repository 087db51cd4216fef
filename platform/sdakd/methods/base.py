"""What every method shares: the student, the three-stage schedule, the supervised and adversarial terms, the
pairing of feature taps, and lazy step outputs.

A method subclasses `Method`, declares its stages as data (`stages()`, usually through `three_stages`), adds
nets in `build()`, and writes each loss term it names as a small `g_<term>` / `d_<term>` function. The engine
calls only this interface (`sdakd.engine.interface.StagedMethod`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from sdakd.config.schema import ExperimentConfig
from sdakd.engine.stage import Stage
from sdakd.errors import SdakdError
from sdakd.losses import AdversarialLoss, PerceptualLoss
from sdakd.losses.adversarial import r1_penalty
from sdakd.models import FeatureTaps, generate, pair_taps
from sdakd.models.from_config import student_generator
from sdakd.teacher.frozen import Teacher

REAL_FAKE = {"real": 1.0, "fake": 1.0}  # a D's terms: GT as real, the student's output as fake


class NoOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # as the config's sections


class GANOptions(NoOptions):
    """Knobs of every method that trains its own adversary."""

    warm_d: bool = Field(True, description="train the D(s) in stage 2, before they feed the generator in stage 3")


class Step:
    """One batch's outputs, computed at most once and shared by the G terms and the D terms."""

    def __init__(self, method: "Method", batch: Mapping[str, torch.Tensor]) -> None:
        self.method = method
        self.lr = batch["lr"]
        self.hr = batch["hr"]
        self.cond = batch.get("cond")  # per-sample conditioning (GCFSR's upscaling factors); absent otherwise

    @cached_property
    def sr(self) -> torch.Tensor:
        return generate(self.method.nets["student_g"], self.lr, self.cond)

    @cached_property
    def student_features(self) -> dict[str, torch.Tensor]:
        """The student's tapped features of this batch (its taps record them during the forward of `sr`)."""
        self.sr
        taps = self.method.student_taps
        return dict(taps.features) if taps else {}

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
    name: ClassVar[str] = ""  # set by METHODS.register
    Options: ClassVar[type[BaseModel]] = NoOptions
    uses_teacher: ClassVar[bool] = True
    # This method's own knobs, as search-space parameters (dotted path -> distribution): what a grid's `tune:`
    # searches for it, so that every method gets the same tuning budget over what it alone adds.
    tunable: ClassVar[dict[str, dict[str, Any]]] = {}
    # Which nets each optimizer trains; a name absent from `nets` is simply skipped.
    g_nets: ClassVar[tuple[str, ...]] = ("student_g", "adapters", "connectors")
    d_nets: ClassVar[tuple[str, ...]] = ("d", "d_kd")

    def __init__(self, cfg: ExperimentConfig, teacher: Teacher | None) -> None:
        if self.uses_teacher and teacher is None:
            raise SdakdError(f"method {self.name!r} needs a teacher")
        self.cfg = cfg
        self.options: Any = self.options_of(cfg)
        self.teacher = teacher if self.uses_teacher else None
        self.student_taps: FeatureTaps | None = None
        self.teacher_tap_names: list[str] = []
        self.student_tap_names: list[str] = []
        self.adversarial = AdversarialLoss(cfg.loss.gan.type)
        self.nets = nn.ModuleDict(self.build())
        self._check_terms()
        uses_perceptual = any("perceptual" in s.g_loss for s in self.stages())
        self.perceptual = PerceptualLoss(cfg.loss.perceptual) if uses_perceptual else None

    @classmethod
    def options_of(cls, cfg: ExperimentConfig) -> BaseModel:
        """This method's knobs in `cfg` (validated by the config loader), or their defaults."""
        return cfg.methods.get(cls.name) or cls.Options()

    # ------------------------------------------------------------------ declared by each method
    def build(self) -> dict[str, nn.Module]:
        return {"student_g": student_generator(self.cfg)}

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for declaring them
    def three_stages(
        self, distill: Mapping[str, float], gan: Mapping[str, float], d_loss: Mapping[str, float], warm_d: bool
    ) -> list[Stage]:
        """The schedule every method shares, so all get the same generator steps and evaluation points:
        s1 supervised; s2 + `distill` (and the D terms `d_loss` if `warm_d`); s3 + `gan`, with `d_loss`."""
        stages = self.cfg.stages
        supervised = self.supervised()
        distilled = {**supervised, **distill}
        return [
            Stage("s1", stages.s1.iters, g_loss=supervised),
            Stage("s2", stages.s2.iters, g_loss=distilled, d_loss=d_loss if warm_d else {}),
            Stage("s3", stages.s3.iters, g_loss={**distilled, **gan}, d_loss=d_loss),
        ]

    def tap_pairs(self, student: nn.Module, every: int) -> list[tuple[str, str]]:
        """(teacher tap, student tap) at every `every`-th student block; the student's taps are hooked, so each
        step's `student_features` and `teacher_features` hold them."""
        pairs = pair_taps(self.teacher.g, student, every)
        self.teacher_tap_names = [t for t, _ in pairs]
        self.student_tap_names = [s for _, s in pairs]
        self.student_taps = FeatureTaps(student, self.student_tap_names)
        return pairs

    # ------------------------------------------------------------------ used by the engine
    def step(self, batch: Mapping[str, torch.Tensor]) -> Step:
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

"""Validation: the student (and, once, the teacher and bicubic) on the validation images, scored per metric;
and what a generator costs at the size the reports use."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from sdakd.config.schema import ExperimentConfig
from sdakd.data import factor_val_pairs, val_pairs
from sdakd.data.dataset import Dataset
from sdakd.data.degrade import bicubic_up
from sdakd.evaluate.cost import count_params, latency_ms, macs
from sdakd.evaluate.metrics import psnr_y, ssim_y
from sdakd.models import generate
from sdakd.teacher.frozen import Teacher

COST_LR_SIZE = 64  # MACs and latency are measured on a 64x64 LR input (fixed-size families: at their out_size)

# Full-reference image metrics, each (output, reference, crop border) -> float on one image. Every entry is
# scored against GT (`<name>`), for the references (`bicubic_<name>`, `teacher_<name>`), and against the
# teacher's output where `VS_TEACHER` names it (`<name>_vs_teacher`). Extra metrics plug in here.
FULL_REFERENCE: dict[str, Callable[[torch.Tensor, torch.Tensor, int], float]] = {"psnr_y": psnr_y, "ssim_y": ssim_y}
VS_TEACHER = ("psnr_y",)


class Validator:
    """Validation images with the teacher's and bicubic outputs computed once.

    GCFSR mode (data.scales): every image at every factor, its LR upsampled back to HR size and the factor passed
    as `cond`; so the bicubic reference is that upsampled LR, and the BasicSR crop border (data.scale) is 1 px.
    """

    def __init__(self, cfg: ExperimentConfig, data: Dataset, teacher: Teacher | None, device: torch.device):
        d = cfg.data
        if d.scales:
            pairs = factor_val_pairs(data.root, d.scales, d.gt_size)
        else:
            pairs = [(*pair, None) for pair in val_pairs(data.root, d.scale, max_side=d.val_max_side)]
        self.pairs = pairs[: cfg.run.eval_max_images] if cfg.run.eval_max_images else pairs
        self.scale = cfg.data.scale
        self.device = device
        self.teacher_sr = [self.run(teacher.g, lr, cond) for _, lr, _, cond in self.pairs] if teacher else None

    @torch.no_grad()
    def run(self, g: nn.Module, lr: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """`g`'s output for one validation LR, on the validator's device, clamped to [0, 1], back on the CPU."""
        cond = None if cond is None else cond.to(self.device)
        return generate(g, lr.unsqueeze(0).to(self.device), cond).clamp(0, 1).cpu()

    def _score(self, outputs: list[torch.Tensor], references: list[torch.Tensor], names: Iterable[str],
               prefix: str = "", suffix: str = "") -> dict[str, float]:
        return {
            f"{prefix}{name}{suffix}": _mean(FULL_REFERENCE[name](o, r, self.scale) for o, r in zip(outputs, references))
            for name in names
        }

    def _gt(self) -> list[torch.Tensor]:
        return [hr.unsqueeze(0) for _, _, hr, _ in self.pairs]

    def student(self, g: nn.Module) -> dict[str, float]:
        was_training = g.training
        g.eval()
        outputs = [self.run(g, lr, cond) for _, lr, _, cond in self.pairs]
        g.train(was_training)
        metrics = self._score(outputs, self._gt(), FULL_REFERENCE)
        if self.teacher_sr is not None:
            metrics |= self._score(outputs, self.teacher_sr, VS_TEACHER, suffix="_vs_teacher")
        return metrics

    def references(self) -> dict[str, float]:
        bicubic = [bicubic_up(lr.unsqueeze(0), self.scale).clamp(0, 1) for _, lr, _, _ in self.pairs]
        metrics = self._score(bicubic, self._gt(), FULL_REFERENCE, prefix="bicubic_")
        if self.teacher_sr is not None:
            metrics |= self._score(self.teacher_sr, self._gt(), FULL_REFERENCE, prefix="teacher_")
        return metrics


def _mean(values: Iterable[float]) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)


def cost_side(g: nn.Module) -> int:
    """The input side cost is measured at: a fixed-size family (GCFSR) takes its LR upsampled to out_size."""
    return getattr(g, "out_size", COST_LR_SIZE)


def cost(g: nn.Module, device: torch.device, repeats: int) -> dict[str, float]:
    shape = (1, 3, cost_side(g), cost_side(g))
    g = g.eval()
    return {
        "params": count_params(g),
        "macs": macs(g, shape),
        "latency_ms": latency_ms(g, shape, repeats=repeats, device=device),
    }

"""Validation: the student (and, once, the teacher and bicubic) on the validation images, scored per metric;
and what a generator costs at the size the reports use."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from sdakd.config.schema import ExperimentConfig
from sdakd.data import factor_val_pairs, val_pairs
from sdakd.data.dataset import Dataset
from sdakd.data.degrade import bicubic_up
from sdakd.evaluate.cost import count_params, latency_ms, macs
from sdakd.evaluate.distribution import PatchDistance, crop_patches, patch_positions
from sdakd.evaluate.metrics import lpips_or_none, psnr_y, ssim_y
from sdakd.evaluate.registry import unavailable
from sdakd.models import generate
from sdakd.teacher.frozen import Teacher

COST_LR_SIZE = 64  # MACs and latency are measured on a 64x64 LR input (fixed-size families: at their out_size)

ImageScore = Callable[[torch.Tensor, torch.Tensor, int], float]  # (output, reference, crop border) of one image


class Validator:
    """Validation images with the teacher's and bicubic outputs computed once, scored by every available metric
    of `sdakd.evaluate.registry`; `unavailable` says which are not, and why.

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
        self.unavailable = unavailable(cfg, teacher is not None)
        self.weights = {name: path for name, path in _weight_files(cfg).items() if name not in self.unavailable}
        # full-reference metrics of one image, by name (their `_vs_teacher` twins reuse them)
        self.image_scores: dict[str, ImageScore] = {"psnr_y": psnr_y, "ssim_y": ssim_y}
        if "lpips" not in self.unavailable:
            lp = cfg.eval.lpips
            self.image_scores["lpips"] = lambda o, r, _crop: lpips_or_none(o, r, lp.backbone_weights, lp.net)
        self.gt = [hr.unsqueeze(0) for _, _, hr, _ in self.pairs]
        self.patches = None
        if "fid" not in self.unavailable:
            f = cfg.eval.fid
            positions = patch_positions([tuple(hr.shape[-2:]) for hr in self.gt], f.patch, f.patches, f.seed)
            self.patches = partial(crop_patches, positions=positions)
            self.distance = PatchDistance(f.feature_weights, self.patches(self.gt), device)
        self.teacher_sr = [self.run(teacher.g, lr, cond) for _, lr, _, cond in self.pairs] if teacher else None

    @torch.no_grad()
    def run(self, g: nn.Module, lr: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """`g`'s output for one validation LR, on the validator's device, clamped to [0, 1], back on the CPU."""
        cond = None if cond is None else cond.to(self.device)
        return generate(g, lr.unsqueeze(0).to(self.device), cond).clamp(0, 1).cpu()

    def score(self, outputs: list[torch.Tensor], references: list[torch.Tensor], suffix: str = "") -> dict[str, float]:
        """Every available image metric of `outputs` against `references`, named `<metric><suffix>`."""
        return {
            name + suffix: _mean(fn(o, r, self.scale) for o, r in zip(outputs, references))
            for name, fn in self.image_scores.items()
            if name + suffix not in self.unavailable
        }

    def score_vs_gt(self, outputs: list[torch.Tensor]) -> dict[str, float]:
        metrics = self.score(outputs, self.gt)
        if self.patches is not None:
            metrics |= self.distance(self.patches(outputs))
        return metrics

    def student(self, g: nn.Module) -> dict[str, float]:
        was_training = g.training
        g.eval()
        outputs = [self.run(g, lr, cond) for _, lr, _, cond in self.pairs]
        g.train(was_training)
        metrics = self.score_vs_gt(outputs)
        if self.teacher_sr is not None:
            metrics |= self.score(outputs, self.teacher_sr, "_vs_teacher")
        return metrics

    def references(self) -> dict[str, float]:
        bicubic = [bicubic_up(lr.unsqueeze(0), self.scale).clamp(0, 1) for _, lr, _, _ in self.pairs]
        metrics = {f"bicubic_{k}": v for k, v in self.score_vs_gt(bicubic).items()}
        if self.teacher_sr is not None:
            metrics |= {f"teacher_{k}": v for k, v in self.score_vs_gt(self.teacher_sr).items()}
        return metrics


def _weight_files(cfg: ExperimentConfig) -> dict[str, Path | None]:
    return {"lpips": cfg.eval.lpips.backbone_weights, "fid": cfg.eval.fid.feature_weights}


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

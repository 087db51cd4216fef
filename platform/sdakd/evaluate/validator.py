"""Validation: the student (and, once, the teacher and bicubic) on the validation images, scored per metric;
and what a generator costs at the size the reports use."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from sdakd.config.schema import ExperimentConfig
from sdakd.data import factor_val_pairs, val_pairs
from sdakd.data.dataset import Dataset
from sdakd.data.degrade import bicubic_up
from sdakd.evaluate.cost import count_params, latency_ms, macs
from sdakd.evaluate.distribution import PatchDistance, crop_patches, patch_positions
from sdakd.evaluate.metrics import lpips_or_none, psnr_y, ssim_y
from sdakd.evaluate.niqe import niqe_params, niqe_unfit, niqe_y
from sdakd.evaluate.registry import METRICS, unavailable
from sdakd.models import generate
from sdakd.teacher.frozen import Teacher

COST_LR_SIZE = 64  # MACs and latency are measured on a 64x64 LR input (fixed-size families: at their out_size)

ImageScore = Callable[[torch.Tensor, torch.Tensor, int], float]  # (output, reference, crop border) of one image


class Validator:
    """The images of one split (val: what stage ends, searches and ASHA read; test: what reports read), with the
    teacher's and bicubic outputs computed once, scored by every available metric of `sdakd.evaluate.registry`;
    `unavailable` says which are not, and why.

    GCFSR mode (data.scales): every image at every factor, its LR upsampled back to HR size and the factor passed
    as `cond`; so the bicubic reference is that upsampled LR, and the BasicSR crop border (data.scale) is 1 px.
    """

    def __init__(
        self, cfg: ExperimentConfig, data: Dataset | None, teacher: Teacher | None, device: torch.device,
        split: str = "val", pairs: Sequence[tuple[str, torch.Tensor, torch.Tensor]] | None = None,
    ):
        """The images of `data`'s `split`, or (an evaluation suite's) the (name, lr, hr) `pairs` as given."""
        d = cfg.data
        if pairs is not None:
            self.pairs = [(*pair, None) for pair in pairs]
        else:
            if d.scales:
                found = factor_val_pairs(data.root, d.scales, d.gt_size, split)
            else:
                found = [(*pair, None) for pair in val_pairs(data.root, d.scale, max_side=d.val_max_side, split=split)]
            self.pairs = found[: cfg.run.eval_max_images] if cfg.run.eval_max_images else found
        self.scale = cfg.data.scale
        self.device = device
        self.unavailable = unavailable(cfg, teacher is not None)
        if "niqe" not in self.unavailable:  # whether its 96-px blocks fit, only the images tell
            if reason := niqe_unfit([tuple(hr.shape[-2:]) for _, _, hr, _ in self.pairs], self.scale):
                self.unavailable["niqe"] = reason
        # every metric file that scores: the ones the config names, and the NIQE model found by default
        self.weights = {name: path for name, path in _weight_files(cfg).items() if name not in self.unavailable}
        # full-reference metrics of one image, by name (their `_vs_teacher` twins reuse them)
        self.image_scores: dict[str, ImageScore] = {"psnr_y": psnr_y, "ssim_y": ssim_y}
        if "lpips" not in self.unavailable:
            lp = cfg.eval.lpips
            self.image_scores["lpips"] = lambda o, r, _crop: lpips_or_none(o, r, lp.backbone_weights, lp.net)
        if "niqe" not in self.unavailable:  # no reference, so no `_vs_teacher` twin
            self.image_scores["niqe"] = lambda o, _reference, crop: niqe_y(o, self.weights["niqe"], crop)
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

    def per_image(
        self, outputs: list[torch.Tensor], references: list[torch.Tensor], suffix: str = ""
    ) -> dict[str, dict[str, float]]:
        """Every available image metric of `outputs` against `references`, named `<metric><suffix>`, per image
        (its name reduced to the characters MLflow allows in a metric name)."""
        names = [re.sub(r"[^\w\-. ]", "_", pair[0]) for pair in self.pairs]
        return {
            name + suffix: {image: float(fn(o, r, self.scale)) for image, o, r in zip(names, outputs, references)}
            for name, fn in self.image_scores.items()
            if name + suffix in METRICS and name + suffix not in self.unavailable
        }

    def outputs(self, g: nn.Module) -> list[torch.Tensor]:
        was_training = g.training
        g.eval()
        outputs = [self.run(g, lr, cond) for _, lr, _, cond in self.pairs]
        g.train(was_training)
        return outputs

    def student(self, g: nn.Module) -> dict[str, float]:
        return self._scores(self.outputs(g))[0]

    def report(self, g: nn.Module) -> dict[str, dict]:
        """The student's and the references' scores, and the student's per image (paired statistics resample
        images): what metrics.json keeps of the test split."""
        means, per_image = self._scores(self.outputs(g))
        return {"student": means, "references": self.references(), "per_image": per_image}

    def _scores(self, outputs: list[torch.Tensor]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """(the student's mean scores, its image metrics per image) for its `outputs`."""
        per_image = self.per_image(outputs, self.gt)
        if self.teacher_sr is not None:
            per_image |= self.per_image(outputs, self.teacher_sr, "_vs_teacher")
        return self._means(per_image, outputs), per_image

    def references(self) -> dict[str, float]:
        bicubic = [bicubic_up(lr.unsqueeze(0), self.scale).clamp(0, 1) for _, lr, _, _ in self.pairs]
        metrics = {f"bicubic_{k}": v for k, v in self._vs_gt(bicubic).items()}
        if self.teacher_sr is not None:
            metrics |= {f"teacher_{k}": v for k, v in self._vs_gt(self.teacher_sr).items()}
        return metrics

    def _vs_gt(self, outputs: list[torch.Tensor]) -> dict[str, float]:
        return self._means(self.per_image(outputs, self.gt), outputs)

    def _means(self, per_image: dict[str, dict[str, float]], outputs: list[torch.Tensor]) -> dict[str, float]:
        """Image metrics averaged over the images, and the distribution metrics (FID, KID) of `outputs`."""
        means = {name: _mean(values.values()) for name, values in per_image.items()}
        return means | (self.distance(self.patches(outputs)) if self.patches is not None else {})


def _weight_files(cfg: ExperimentConfig) -> dict[str, Path | None]:
    e = cfg.eval
    return {"lpips": e.lpips.backbone_weights, "fid": e.fid.feature_weights, "niqe": niqe_params(e.niqe.params)}


def _mean(values: Iterable[float]) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)


def cost_side(g: nn.Module) -> int:
    """The input side cost is measured at: a fixed-size family (GCFSR) takes its LR upsampled to out_size."""
    return getattr(g, "out_size", COST_LR_SIZE)


def cost(g: nn.Module, device: torch.device, repeats: int) -> dict[str, float]:
    """Params, MACs and latency on `device`; a net already there is timed in place, as it is laid out (a run
    converts student and teacher to channels_last together), with no copy."""
    shape = (1, 3, cost_side(g), cost_side(g))
    g = g.eval()
    here = next(g.parameters()).device
    # a device without an index (`cuda`) is taken as the net's own GPU: torch.device('cuda') != 'cuda:0'
    same = here.type == device.type and device.index in (None, here.index)
    return {
        "params": count_params(g),
        "macs": macs(g, shape),
        "latency_ms": latency_ms(g, shape, repeats=repeats, device=here if same else device),
    }

"""Every metric by name, once: evaluation computes them, metrics.json and MLflow record them, reports show them,
searches optimise and constrain them. An unknown name lists the known ones.

A metric that needs local weights the config does not give (or gives unusable) is *unavailable*: it is left out
of every result and listed with its reason, never reported as None, 0 or a number from weights made up here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sdakd.config.schema import ExperimentConfig
from sdakd.evaluate.distribution import fid_unavailable
from sdakd.evaluate.metrics import lpips_unavailable
from sdakd.evaluate.niqe import niqe_params, niqe_unavailable
from sdakd.registry import Registry


@dataclass(frozen=True)
class Metric:
    mode: Literal["max", "min"]  # which way is better
    # image: per validation image, averaged; set: over the whole validation set (patches); cost: of the student
    # network
    kind: Literal["image", "set", "cost"]
    reference: Literal["gt", "teacher", "none"]  # what the student's output is compared with (none: nothing)
    needs: str | None = None  # the config field that names its weights
    heading: str = ""  # a report's column heading
    digits: int = 2


DEFINITIONS = {  # in the order reports show them
    "psnr_y": Metric("max", "image", "gt", heading="PSNR-Y (dB)"),
    "ssim_y": Metric("max", "image", "gt", heading="SSIM-Y", digits=4),
    "psnr_y_vs_teacher": Metric("max", "image", "teacher", heading="PSNR vs teacher (dB)"),
    "ssim_y_vs_teacher": Metric("max", "image", "teacher", heading="SSIM vs teacher", digits=4),
    "lpips": Metric("min", "image", "gt", "eval.lpips.backbone_weights", "LPIPS", 4),
    "lpips_vs_teacher": Metric("min", "image", "teacher", "eval.lpips.backbone_weights", "LPIPS vs teacher", 4),
    "fid": Metric("min", "set", "gt", "eval.fid.feature_weights", "FID (patches)"),
    "kid": Metric("min", "set", "gt", "eval.fid.feature_weights", "KID (patches)", 4),
    "niqe": Metric("min", "image", "none", "eval.niqe.params", "NIQE", 4),
    "macs": Metric("min", "cost", "none", heading="MACs (G)"),
    "params": Metric("min", "cost", "none", heading="params (M)", digits=3),
}
METRICS: Registry[Metric] = Registry("metric")
for _name, _metric in DEFINITIONS.items():
    METRICS.register(_name)(_metric)

# The metrics the validator computes from images (the rest are the network's cost).
IMAGE_METRICS = tuple(name for name, m in DEFINITIONS.items() if m.kind != "cost")


def metric(name: str) -> Metric:
    return METRICS.get(name)  # raises with the known names


def unavailable(cfg: ExperimentConfig, has_teacher: bool) -> dict[str, str]:
    """Each metric this config cannot compute, with the reason."""
    reasons = {
        "eval.lpips.backbone_weights": lpips_unavailable(cfg.eval.lpips.backbone_weights, cfg.eval.lpips.net),
        "eval.fid.feature_weights": fid_unavailable(cfg.eval.fid.feature_weights),
        "eval.niqe.params": niqe_unavailable(niqe_params(cfg.eval.niqe.params)),
    }
    missing = {}
    for name in METRICS.names():
        m = METRICS.get(name)
        if m.needs and reasons[m.needs]:
            missing[name] = f"{m.needs}: {reasons[m.needs]}"
        elif m.reference == "teacher" and not has_teacher:
            missing[name] = f"method {cfg.method} trains without a teacher"
    return missing

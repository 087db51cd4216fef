"""The config's `eval` section: which metrics need which local weights, and the named evaluation suites. Not part
of the config hash (sdakd.config.identity): it changes what is measured, not what is learned."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sdakd.config.frozen import Frozen


class LpipsConfig(Frozen):
    net: Literal["alex", "vgg"] = Field("alex", description="LPIPS backbone (torchmetrics' linear heads for it)")
    backbone_weights: Path | None = Field(
        None, description="torchvision's ImageNet checkpoint of that backbone (alexnet-owt-7be5be79.pth or "
        "vgg16-397923af.pth); None = no LPIPS (listed as unavailable)",
    )


class FidConfig(Frozen):
    """FID and KID on patches: SR validation sets are a few images, so each output and each GT image gives
    `patches` crops of `patch` px at the same seeded positions."""

    feature_weights: Path | None = Field(
        None, description="the FID InceptionV3 weights (torch-fidelity's pt_inception-2015-12-05 file); None = no FID"
    )
    patch: int = Field(64, ge=16)
    patches: int = Field(16, ge=1, description="crops per validation image")
    seed: int = 0


class NiqeConfig(Frozen):
    params: Path | None = Field(
        None, description="the pristine NIQE model: an .npz with mu_pris_param, cov_pris_param and gaussian_window "
        "(as BasicSR's niqe_pris_params.npz); None = no NIQE (listed as unavailable)",
    )


SUITE_SOURCES = "split (a dataset's split), images (a folder of HR images) or lr and hr (folders of paired files)"


class SuiteConfig(Frozen):
    """A named evaluation set beside the dataset's splits (docs/metrics.md, "Evaluation suites"): its images, how
    their LR is made, and a size bound."""

    split: Literal["train", "val", "test"] | None = Field(None, description="a split of `dataset`")
    dataset: Path | None = Field(None, description="the dataset folder holding `split`; None = the run's data")
    images: Path | None = Field(None, description="a folder of HR images, degraded by `degradation`")
    lr: Path | None = Field(None, description="a folder of LR images, each paired with the file of `hr` of its name")
    hr: Path | None = Field(None, description="a folder of HR images, data.scale times the size of their LR")
    degradation: Literal["bicubic", "second_order", "none"] | None = Field(
        None, description="how the LR is made from the HR: bicubic; second_order (the training's, each image's "
        "draws seeded by `seed` and its name, so every run sees the same LR); none for paired files. "
        "None = none for paired files, else bicubic",
    )
    seed: int = Field(0, description="second_order: the suite's seed")
    max_side: int | None = Field(None, ge=8, description="centre-crop each HR image to at most this side")
    max_images: int | None = Field(None, ge=1, description="the first (by name) so many images")
    stage_ends: bool = Field(False, description="also score the suite at every stage end (else at the run's end)")

    @model_validator(mode="after")
    def _one_source(self) -> "SuiteConfig":
        paired = self.lr is not None or self.hr is not None
        given = [name for name, on in (("split", self.split is not None), ("images", self.images is not None),
                                       ("lr/hr", paired)) if on]
        if len(given) != 1:
            raise ValueError(f"a suite needs exactly one source, got {given or 'none'}; allowed: {SUITE_SOURCES}")
        if paired and (self.lr is None or self.hr is None):
            raise ValueError("paired files need both lr and hr folders")
        if self.dataset is not None and self.split is None:
            raise ValueError("dataset names where `split` is read; it needs a split")
        if paired and self.degradation not in (None, "none"):
            raise ValueError(f"paired files bring their own LR: degradation must be none, got {self.degradation}")
        if not paired and self.degradation == "none":
            raise ValueError("degradation none is for paired files; allowed here: bicubic, second_order")
        return self

    @property
    def lr_degradation(self) -> str:
        """The degradation that makes the LR (none: read from the `lr` folder)."""
        return self.degradation or ("none" if self.lr is not None else "bicubic")


class EvalConfig(Frozen):
    """Which metrics need which local weights (none are downloaded), and which named suites are scored. Excluded
    from the config hash: they change what is measured, not what is learned."""

    lpips: LpipsConfig = LpipsConfig()
    fid: FidConfig = FidConfig()
    niqe: NiqeConfig = NiqeConfig()
    suites: dict[str, SuiteConfig] = Field(
        default_factory=dict, description="name -> suite; each scored at the end of every run (metrics.json "
        "`suites.<name>`, MLflow `suite.<name>.<metric>`, a section of the grid report)",
    )

    @field_validator("suites")
    @classmethod
    def _plain_names(cls, suites: dict[str, SuiteConfig]) -> dict[str, SuiteConfig]:
        bad = [name for name in suites if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name)]
        if bad:
            raise ValueError(f"suite names {bad}: allowed are letters, digits, _ and - (they name MLflow metrics)")
        return suites

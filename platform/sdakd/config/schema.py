"""The experiment config's schema: typed, frozen sections with their bounds. Nothing else of the project here.

Every knob a search or ablation may touch is a field with a dotted path (`stages.s3.iters`, `loss.fm.weight`,
`student_d.width`); searches and grids are just dotted-path overrides. Method-specific knobs live under
`methods.<name>.*`: the loader (`sdakd.config.load`) validates them with the method's own params model, through
the method registry, so this module needs no method code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from sdakd.config.eval_schema import EvalConfig
from sdakd.config.frozen import Frozen

# Teachers converted from a registry package (sdakd.teacher.named); any other `teacher.weights` is a file path.
NAMED_TEACHERS = ("realesrgan-x4plus", "realesrgan-x4plus-anime-6b", "realesr-animevideov3")


class TeacherPretrain(Frozen):
    """How a teacher without weights is trained (once; cached by the hash of what it depends on)."""

    iters: int = Field(2000, ge=0)
    d_iters: int = Field(200, ge=0, description="teacher-D steps on GT vs the frozen teacher's output")
    lr: float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    perceptual_weight: float = Field(1.0, ge=0)


class TeacherConfig(Frozen):
    arch: str = "rrdbnet"
    num_feat: int = Field(64, ge=1)
    num_block: int | None = Field(
        23, ge=1, description="depth: RRDB blocks (rrdbnet) or body convs (srvgg_compact); null for gcfsr"
    )
    num_grow_ch: int | None = Field(32, ge=1, description="rrdbnet only; null for other families")
    d_arch: str = "unet_sn"
    d_num_feat: int = Field(64, ge=1)
    weights: Path | str | None = Field(
        None, description="official generator .pth (e.g. RealESRGAN_x4plus.pth), or a named teacher: "
        + ", ".join(NAMED_TEACHERS),
    )
    d_weights: Path | None = Field(None, description="official discriminator .pth (..._netD.pth)")
    pretrain: TeacherPretrain = TeacherPretrain()

    @field_validator("weights")
    @classmethod
    def _name_or_path(cls, weights: Path | str | None) -> Path | str | None:
        """A named teacher stays a name (no folder makes it absolute); anything else is a path."""
        return weights if weights is None or weights in NAMED_TEACHERS else Path(weights)


class StudentConfig(Frozen):
    width: float = Field(0.25, gt=0, le=1, description="generator width factor r (channels x r)")
    num_block: int | None = Field(None, ge=1, description="depth (blocks or convs); None = the teacher's")


class StudentDConfig(Frozen):
    width: float = Field(0.25, gt=0, le=1, description="student-discriminator width factor r_D")


class StageConfig(Frozen):
    iters: int = Field(ge=0)


class StagesConfig(Frozen):
    s1: StageConfig = StageConfig(iters=5000)
    s2: StageConfig = StageConfig(iters=5000)
    s3: StageConfig = StageConfig(iters=20000)


class Weighted(Frozen):
    weight: float = Field(1.0, ge=0)


class PerceptualLoss(Weighted):
    vgg_weights: Path | None = Field(None, description="local timm vgg19 weights; None = random init (logged)")
    # BasicSR's pre-activation VGG19 layers and weights (Real-ESRGAN recipe).
    layers: dict[str, float] = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}

    @field_validator("layers")
    @classmethod
    def _known_layers(cls, layers: dict[str, float]) -> dict[str, float]:
        from sdakd.losses.perceptual import VGG19_CONVS  # here, so that loading a config does not import torch

        unknown = sorted(set(layers) - set(VGG19_CONVS))
        if unknown or not layers:
            raise ValueError(f"unknown VGG19 layers {unknown}; allowed: {', '.join(VGG19_CONVS)}")
        return layers


class FeatureMapLoss(Weighted):
    every: int = Field(1, ge=1, description="tap every k-th generator block (plus conv_body)")


class GanLoss(Weighted):
    weight: float = Field(0.1, ge=0)
    type: Literal["vanilla", "hinge", "softplus"] = "vanilla"


class R1Penalty(Frozen):
    weight: float = Field(
        0.0, ge=0, description="gamma of the R1 penalty gamma/2 E|grad D(GT)|^2 in every D's GT term; 0 = off"
    )


class LossConfig(Frozen):
    pixel: Weighted = Weighted()
    perceptual: PerceptualLoss = PerceptualLoss()
    teacher_output: Weighted = Weighted()
    fm: FeatureMapLoss = FeatureMapLoss()
    gan: GanLoss = GanLoss()
    r1: R1Penalty = R1Penalty()


class DataConfig(Frozen):
    root: Path | str | None = Field(
        None, description="a dataset folder (sdakd data build), or its URI (s3://bucket/path, gs://, hdfs://; each "
        "node copies it once into run.data_cache); None = the bundled photos (built on first use)",
    )
    scale: Literal[1, 2, 4] = 4
    gt_size: int = Field(256, ge=8)
    batch_size: int = Field(12, ge=1, description="per worker")
    degradation: Literal["bicubic", "second_order"] = "bicubic"
    degrade_on: Literal["loader", "device"] = Field(
        "device", description="where second_order degrades: batched on the training device after the loader served "
        "clean HR crops and their random draws, or per sample in the loader (bicubic always runs in the loader)",
    )
    scales: tuple[int, ...] | None = Field(
        None, min_length=1, description="GCFSR mode: each sample's upscaling factor is drawn from this list (repeat "
        "one to draw it more often), the LR comes upsampled back to gt_size and the factor goes to the generator "
        "as `cond`; needs scale 1, since the network's input is then at output size",
    )
    @field_validator("root", mode="before")
    @classmethod
    def _uri_or_path(cls, value: object) -> object:
        # a URI stays text (as a Path, s3://b would become s3:/b); anything else is a local path
        return Path(value) if isinstance(value, str) and "://" not in value else value

    val_max_side: int | None = Field(None, ge=8, description="center-crop validation HR to bound eval cost")
    num_workers: int = Field(0, ge=0, description="loader processes (0 = in the training process)")

    @model_validator(mode="after")
    def _crop_fits_scale(self) -> "DataConfig":
        if self.gt_size % (self.scale * 4):
            raise ValueError(f"gt_size {self.gt_size} must be a multiple of 4 x scale = {4 * self.scale}")
        if self.scales and self.scale != 1:
            raise ValueError(f"scales needs scale 1 (GCFSR mode feeds the LR upsampled to HR size), got {self.scale}")
        bad = [f for f in self.scales or () if f < 1 or self.gt_size % f]
        if bad:
            raise ValueError(f"scales {bad}: each factor must be >= 1 and divide gt_size {self.gt_size}")
        return self


class OptimConfig(Frozen):
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    ema: float = Field(0.999, ge=0, lt=1, description="generator EMA decay; 0 disables")
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = Field(True, description="channels_last on CUDA (ignored on CPU)")


class RunConfig(Frozen):
    """Where and how often: excluded from the config hash."""

    out_dir: Path | None = Field(None, description="None = runs/<method>-<hash>")
    cache_dir: Path = Path(".sdakd")
    data_cache: Path | None = Field(
        None, description="each node's copy of a data.root URI; None = ~/.cache/sdakd/datasets (node-local disk)"
    )
    device: str = "auto"
    checkpoint_every: int = Field(1000, ge=1)
    log_every: int = Field(50, ge=1)
    eval_max_images: int | None = Field(None, ge=1)
    latency_repeats: int = Field(10, ge=1)
    storage_path: str | None = Field(
        None, description="Ray Train checkpoints and results (a folder all nodes share, or s3://...); "
        "None = env SDAKD_STORAGE_PATH, else <cwd>/ray_results",
    )
    max_failures: int = Field(
        2, ge=-1, description="restarts from the last checkpoint after a failure (a lost node, a killed process): of a "
        "Ray Train worker group, of a search trial or a grid cell (Tune); and retries of a worker group that did not "
        "start; -1 = unlimited",
    )
    max_d_loss: float | None = Field(
        1e4, gt=0, description="a discriminator loss (a term or the weighted total) above this stops the run as "
        "diverged, as a non-finite loss does; null = no bound. Never changes a run that finishes: not in the hash",
    )
    tracking_uri: str | None = Field(
        None, description="MLflow store; None = env SDAKD_TRACKING_URI, else sqlite:///<cwd>/mlflow.db"
    )
    tracking_wait_s: float = Field(
        300, ge=0, description="how long the end of a tracked run (a grid cell) waits for an MLflow server that does "
        "not answer; then what was not logged is listed in the run folder's tracking_unlogged.json",
    )


class ExperimentConfig(Frozen):
    method: str = "sdakd"
    seed: int = 0
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    student_d: StudentDConfig = StudentDConfig()
    stages: StagesConfig = StagesConfig()
    loss: LossConfig = LossConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    methods: dict[str, Any] = Field(
        default_factory=dict, description="per-method knobs: methods.<name>.<field> (validated by the loader)"
    )
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _suites_single_scale(self) -> "ExperimentConfig":
        if self.eval.suites and self.data.scales:
            raise ValueError("eval.suites needs one scale (data.scales unset): a suite's LR is made at data.scale")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["methods"] = {
            name: opts.model_dump(mode="json") if isinstance(opts, BaseModel) else opts
            for name, opts in self.methods.items()
        }
        return data

"""The one way through the house: config -> data -> teacher -> method -> engine -> evaluation -> files.

Adapters (Ray Train, Tune, MLflow) call `run_experiment` with their callbacks and a `prepare` hook (DDP); nothing
here imports Ray or MLflow.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from sdakd.config import ExperimentConfig, config_hash, dump_yaml, stable_hash
from sdakd.data import StepBatches, build_dataset, factor_val_pairs, load_manifest, val_pairs
from sdakd.data.degrade import bicubic_up
from sdakd.engine import Callbacks, Engine, Stage
from sdakd.engine.checkpoint import load_checkpoint
from sdakd.errors import SdakdError
from sdakd.evaluate import count_params, latency_ms, macs, psnr_y, ssim_y
from sdakd.methods import METHODS
from sdakd.methods.teacher import PretrainTeacher
from sdakd.methods.base import discriminator, sr_generator
from sdakd.models import generate, load_weights
from sdakd.teacher import Teacher

log = logging.getLogger("sdakd")
COST_LR_SIZE = 64  # MACs and latency are measured on a 64x64 LR input (fixed-size families: at their out_size)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def out_dir_for(cfg: ExperimentConfig) -> Path:
    return Path(cfg.run.out_dir or Path("runs") / f"{cfg.method}-{config_hash(cfg)}")


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Dataset:
    root: Path
    checksum: str


def ensure_dataset(cfg: ExperimentConfig) -> Dataset:
    """The configured shards, or the bundled photos built once into the cache folder."""
    root = cfg.data.root
    if root is None:
        root = cfg.run.cache_dir / "data" / "bundled"
        if not (root / "manifest.json").exists():
            log.info("building the bundled-photo dataset in %s", root)
            build_dataset(root, images_dir=None, min_side=cfg.data.gt_size)
    manifest = load_manifest(root)
    return Dataset(Path(root), manifest["checksum"])


def train_batches(cfg: ExperimentConfig, data: Dataset, batch_size: int, rank: int = 0, world_size: int = 1):
    return StepBatches(
        data.root,
        split="train",
        batch_size=batch_size,
        gt_size=cfg.data.gt_size,
        scale=cfg.data.scale,
        degradation=cfg.data.degradation,
        scales=cfg.data.scales,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
    )


# ---------------------------------------------------------------- teacher


def teacher_discriminator(cfg: ExperimentConfig) -> nn.Module:
    return discriminator(cfg, 1.0)


def pretrain_key(cfg: ExperimentConfig, data: Dataset) -> str:
    """Everything the pretrained teacher depends on, and nothing else (so students share one teacher)."""
    teacher = cfg.teacher.model_dump(mode="json", exclude={"weights", "d_weights"})
    d = cfg.data
    # named only when set, so that the teachers cached before these fields existed keep their keys
    optional = {"scales": d.scales, "r1": cfg.loss.r1.weight}
    return stable_hash(
        {
            "teacher": teacher,
            "data": [data.checksum, d.scale, d.gt_size, d.degradation],
            "perceptual": cfg.loss.perceptual.model_dump(mode="json", exclude={"weight"}),
            "gan": cfg.loss.gan.type,
            "optim": cfg.optim.betas,
            "seed": cfg.seed,
        }
        | {key: value for key, value in optional.items() if value}
    )


def build_teacher(cfg: ExperimentConfig, data: Dataset, device: torch.device) -> Teacher:
    g, d = sr_generator(cfg), teacher_discriminator(cfg)
    if cfg.teacher.weights is not None:
        load_weights(g, cfg.teacher.weights)
        if cfg.teacher.d_weights is not None:
            load_weights(d, cfg.teacher.d_weights)
        else:
            log.warning("teacher.d_weights is not set: the teacher D is randomly initialised")
        return Teacher(g, d, identity=str(cfg.teacher.weights), source="weights").to(device)

    key = pretrain_key(cfg, data)
    path = cfg.run.cache_dir / "teachers" / f"{key}.pt"
    if path.exists():
        log.info("teacher %s loaded from the cache %s", key, path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state = pretrain_teacher(cfg, data, device, path)
    g.load_state_dict(state["g"])
    d.load_state_dict(state["d"])
    return Teacher(g, d, identity=f"pretrain-{key}", source="pretrained-here").to(device)


def shared_inputs(cfg: ExperimentConfig, device: torch.device) -> tuple[Dataset, Teacher | None]:
    """The dataset and, for a method that distils from one, the teacher: built into the caches on first use (the
    bundled shards, a pretrained teacher), loaded from them afterwards."""
    data = ensure_dataset(cfg)
    return data, build_teacher(cfg, data, device) if METHODS.get(cfg.method).uses_teacher else None


def pretrain_teacher(cfg: ExperimentConfig, data: Dataset, device: torch.device, path: Path) -> dict[str, Any]:
    """Train the teacher G (L1 + perceptual), then its D on GT vs the frozen teacher's output; cache both."""
    p = cfg.teacher.pretrain
    log.info("no teacher weights configured: pretraining the teacher (%d G + %d D steps)", p.iters, p.d_iters)
    torch.manual_seed(cfg.seed)
    method = PretrainTeacher(cfg, sr_generator(cfg), teacher_discriminator(cfg)).to(device)
    batches = train_batches(cfg, data, p.batch_size)
    engine = Engine(
        method,
        batches.__getitem__,
        device=device,
        lr_g=p.lr,
        lr_d=p.lr,
        betas=cfg.optim.betas,
        ema_decay=cfg.optim.ema,
        log_every=cfg.run.log_every,
        callbacks=[ConsoleProgress(prefix="teacher ")],
    )
    engine.run()
    state = {"g": engine.eval_generator().state_dict(), "d": method.nets["d"].state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return state


# ---------------------------------------------------------------- evaluation


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
        self.teacher_sr = [self._run(teacher.g, lr, cond) for _, lr, _, cond in self.pairs] if teacher else None

    @torch.no_grad()
    def _run(self, g: nn.Module, lr: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        cond = None if cond is None else cond.to(self.device)
        return generate(g, lr.unsqueeze(0).to(self.device), cond).clamp(0, 1).cpu()

    def _score(self, outputs: list[torch.Tensor], prefix: str) -> dict[str, float]:
        hrs = [hr.unsqueeze(0) for _, _, hr, _ in self.pairs]
        return {
            f"{prefix}psnr_y": _mean(psnr_y(o, hr, self.scale) for o, hr in zip(outputs, hrs)),
            f"{prefix}ssim_y": _mean(ssim_y(o, hr, self.scale) for o, hr in zip(outputs, hrs)),
        }

    def student(self, g: nn.Module) -> dict[str, float]:
        was_training = g.training
        g.eval()
        outputs = [self._run(g, lr, cond) for _, lr, _, cond in self.pairs]
        g.train(was_training)
        metrics = self._score(outputs, "")
        if self.teacher_sr is not None:
            metrics["psnr_y_vs_teacher"] = _mean(psnr_y(o, t, self.scale) for o, t in zip(outputs, self.teacher_sr))
        return metrics

    def references(self) -> dict[str, float]:
        bicubic = [bicubic_up(lr.unsqueeze(0), self.scale).clamp(0, 1) for _, lr, _, _ in self.pairs]
        metrics = self._score(bicubic, "bicubic_")
        if self.teacher_sr is not None:
            metrics |= self._score(self.teacher_sr, "teacher_")
        return metrics


def _mean(values: Iterable[float]) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)


def cost_side(g: nn.Module) -> int:
    """The input side cost is measured at: a fixed-size family (GCFSR) takes its LR upsampled to out_size."""
    return getattr(g, "out_size", COST_LR_SIZE)


def cost(g: nn.Module, device: torch.device, scale: int, repeats: int) -> dict[str, float]:
    shape = (1, 3, cost_side(g), cost_side(g))
    g = g.eval()
    return {
        "params": count_params(g),
        "macs": macs(g, shape),
        "latency_ms": latency_ms(g, shape, repeats=repeats, device=device),
    }


# ---------------------------------------------------------------- progress


class ConsoleProgress(Callbacks):
    """Per-stage progress lines on stdout: stage, step, losses, speed."""

    def __init__(self, prefix: str = "", stream: Any = None) -> None:
        self.prefix = prefix
        self.stream = stream or sys.stdout
        self.tick = time.perf_counter()
        self.last_step = 0

    def on_log(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None:
        now = time.perf_counter()
        rate = (global_step - self.last_step) / max(now - self.tick, 1e-9)
        self.tick, self.last_step = now, global_step
        losses = " ".join(f"{k.removeprefix('loss/')}={v:.4f}" for k, v in sorted(metrics.items()))
        print(f"{self.prefix}[{stage.name}] step {global_step} | {rate:.1f} it/s | {losses}", file=self.stream, flush=True)

    def on_stage_end(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None:
        scores = " ".join(f"{k}={v:.3f}" for k, v in metrics.items())
        print(f"{self.prefix}[{stage.name}] done at step {global_step} | {scores}", file=self.stream, flush=True)


# ---------------------------------------------------------------- the run


@dataclass
class Experiment:
    """Everything built for one run; adapters may wrap `method.nets` (DDP) before `engine` is made."""

    cfg: ExperimentConfig
    device: torch.device
    data: Dataset
    teacher: Teacher | None
    method: Any
    validator: Validator
    out_dir: Path
    engine: Engine | None = None
    world_size: int = 1  # Ray Train workers sharing each step's global batch
    timings: dict[str, float] = field(default_factory=dict)


def build_experiment(
    cfg: ExperimentConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    prepare: Callable[[Any], None] | None = None,
    callbacks: Iterable[Callbacks] = (),
    writer: bool = True,
) -> Experiment:
    device = device or resolve_device(cfg.run.device)
    method_cls = METHODS.get(cfg.method)
    started = time.perf_counter()
    data, teacher = shared_inputs(cfg, device)
    torch.manual_seed(cfg.seed)  # student init depends on the seed alone, not on what ran before
    method = method_cls(cfg, teacher).to(device)
    if cfg.optim.channels_last and device.type == "cuda":
        method.nets.to(memory_format=torch.channels_last)
    if prepare is not None:
        prepare(method)
    validator = Validator(cfg, data, teacher, device)
    out_dir = out_dir_for(cfg)
    exp = Experiment(cfg, device, data, teacher, method, validator, out_dir, world_size=world_size)
    batches = train_batches(cfg, data, cfg.data.batch_size, rank, world_size)
    exp.engine = Engine(
        method,
        batches.__getitem__,
        device=device,
        lr_g=cfg.optim.lr_g,
        lr_d=cfg.optim.lr_d,
        betas=cfg.optim.betas,
        ema_decay=cfg.optim.ema,
        amp=cfg.optim.amp,
        checkpoint_dir=out_dir / "checkpoints",
        checkpoint_every=cfg.run.checkpoint_every,
        log_every=cfg.run.log_every,
        # rank 0 scores each stage; the other ranks' weights are the same, so their reports carry no scores
        evaluate=(lambda: exp.validator.student(exp.engine.eval_generator())) if writer else None,
        callbacks=callbacks,
        writer=writer,
        metadata={"config": cfg.to_dict(), "config_hash": config_hash(cfg)},
    )
    exp.timings["setup_s"] = time.perf_counter() - started
    return exp


def final_metrics(exp: Experiment) -> dict[str, Any]:
    cfg, engine = exp.cfg, exp.engine
    student = engine.eval_generator()
    metrics: dict[str, Any] = {"student": exp.validator.student(student)} | {"references": exp.validator.references()}
    metrics["cost"] = {"student": cost(student, exp.device, cfg.data.scale, cfg.run.latency_repeats)}
    if exp.teacher is not None:
        metrics["cost"]["teacher"] = cost(exp.teacher.g, exp.device, cfg.data.scale, cfg.run.latency_repeats)
        metrics["cost"]["speedup"] = metrics["cost"]["teacher"]["latency_ms"] / metrics["cost"]["student"]["latency_ms"]
    metrics["lpips"] = None  # LPIPS needs local AlexNet/LPIPS weights; none are configured, so none is reported
    metrics["stages"] = engine.history
    metrics["info"] = {
        "method": cfg.method,
        "config_hash": config_hash(cfg),
        "seed": cfg.seed,
        "device": str(exp.device),
        "teacher": exp.teacher.identity if exp.teacher else None,
        "teacher_source": exp.teacher.source if exp.teacher else None,
        "perceptual_pretrained": cfg.loss.perceptual.vgg_weights is not None,
        "dataset_checksum": exp.data.checksum,
        "cost_input": f"1x3x{cost_side(student)}x{cost_side(student)} generator input",
        "timings_s": exp.timings,
    }
    return metrics


def write_run_files(exp: Experiment, command: str | None = None) -> None:
    exp.out_dir.mkdir(parents=True, exist_ok=True)
    (exp.out_dir / "config.yaml").write_text(dump_yaml(exp.cfg))
    (exp.out_dir / "command.txt").write_text((command or shlex.join(sys.argv)) + "\n")


# Fields that fix the networks' shapes: a checkpoint only resumes under the same values.
ARCHITECTURE_FIELDS = ("method", "teacher", "student", "student_d", "data.scale", "methods")


def check_resumable(cfg: ExperimentConfig, path: Path) -> None:
    saved = load_checkpoint(path).get("meta", {}).get("config")
    if saved is None:
        raise SdakdError(f"checkpoint {path} holds no config: it was not written by `sdakd train`")
    here = cfg.to_dict()
    differ = []
    for field_path in ARCHITECTURE_FIELDS:
        a, b = saved, here
        for key in field_path.split("."):
            a, b = (a or {}).get(key), (b or {}).get(key)
        if a != b:
            differ.append(f"{field_path}: checkpoint {a!r} vs config {b!r}")
    if differ:
        raise SdakdError(
            f"checkpoint {path} was written for other networks (wrong architecture?):\n  " + "\n  ".join(differ)
        )


def run_stages(exp: Experiment) -> None:
    """Train the stages left from the engine's position, timing them."""
    started = time.perf_counter()
    exp.engine.run()
    exp.timings["train_s"] = time.perf_counter() - started


def save_results(exp: Experiment, **info: Any) -> dict[str, Any]:
    """The final metrics (with `info` added to theirs), written beside the EMA student's weights."""
    metrics = final_metrics(exp)
    metrics["info"] |= info
    torch.save(exp.engine.eval_generator().state_dict(), exp.out_dir / "student.pt")
    (exp.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def run_experiment(
    cfg: ExperimentConfig,
    *,
    resume: Path | bool | None = None,
    callbacks: Iterable[Callbacks] = (),
    command: str | None = None,
    on_done: Callable[[Experiment, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train all stages locally and write checkpoints, the student weights and metrics.json.

    `on_done(exp, metrics)` lets an adapter (MLflow) read the trained nets and the files before they are freed.
    """
    path = None
    if resume:
        path = out_dir_for(cfg) / "checkpoints" if resume is True else Path(resume)
        check_resumable(cfg, path)  # before any data, teacher or network is built
    exp = build_experiment(cfg, callbacks=[ConsoleProgress(), *callbacks])
    write_run_files(exp, command)
    if path is not None:
        exp.engine.resume(path)
        print(f"resumed from {path} at global step {exp.engine.global_step()}", flush=True)
    run_stages(exp)
    metrics = save_results(exp)
    if on_done is not None:
        on_done(exp, metrics)
    return metrics

"""One run's rooms, built from its config: inputs (data, teacher) -> method -> validator -> engine.

Adapters give their place in a worker group (`Placement`: rank, device, a DDP wrapper) and their engine
callbacks; nothing here imports Ray or MLflow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from sdakd.config.identity import config_hash
from sdakd.config.schema import ExperimentConfig
from sdakd.data.dataset import Dataset, ensure_dataset, train_batches
from sdakd.data.source import StepSource
from sdakd.engine import Callbacks, Engine
from sdakd.engine.device import resolve_device
from sdakd.evaluate.suites import Suites
from sdakd.evaluate.validator import Validator
from sdakd.methods import METHODS
from sdakd.methods.base import Method
from sdakd.models.memory_format import to_channels_last
from sdakd.teacher.cache import run_teacher
from sdakd.teacher.frozen import Teacher


def out_dir_for(cfg: ExperimentConfig) -> Path:
    return Path(cfg.run.out_dir or Path("runs") / f"{cfg.method}-{config_hash(cfg)}")


@dataclass(frozen=True)
class Placement:
    """This process's place in a worker group; the default is a local run's: the only worker."""

    rank: int = 0
    world_size: int = 1  # workers sharing each step's global batch
    device: torch.device | None = None  # None: the config's run.device
    prepare: Callable[[Method], None] | None = None  # wraps the method's nets (DDP) before the engine is made
    # Whether this process writes the run's files and scores its stages: rank 0 alone under Ray Train (the other
    # ranks hold the same weights); False for a throwaway run (benchmarks).
    writer: bool = True


@dataclass
class Experiment:
    """Everything built for one run."""

    cfg: ExperimentConfig
    device: torch.device
    data: Dataset
    teacher: Teacher | None
    method: Method
    validator: Validator
    suites: Suites | None  # the writing rank's evaluation suites (eval.suites), read before training
    out_dir: Path
    placement: Placement
    engine: Engine = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None  # metrics.json, once the run is saved

    @property
    def world_size(self) -> int:
        return self.placement.world_size


def build_experiment(
    cfg: ExperimentConfig, placement: Placement = Placement(), callbacks: Iterable[Callbacks] = ()
) -> Experiment:
    device = placement.device or resolve_device(cfg.run.device)
    method_cls = METHODS.get(cfg.method)
    started = time.perf_counter()
    data = ensure_dataset(cfg)
    suites = Suites(cfg, data, device) if placement.writer else None  # read and checked before a teacher trains
    teacher = run_teacher(cfg, data, device)
    torch.manual_seed(cfg.seed)  # student init depends on the seed alone, not on what ran before
    method = method_cls(cfg, teacher).to(device)
    channels_last = cfg.optim.channels_last and device.type == "cuda"
    if channels_last:  # every net a step runs, so no layout conversion between them
        for net in (method.nets, method.perceptual, *((teacher.g, teacher.d) if teacher else ())):
            if net is not None:
                to_channels_last(net)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: the fastest conv algorithms are found once
    if placement.prepare is not None:
        placement.prepare(method)
    validator = Validator(cfg, data, teacher, device)
    if suites is not None:
        suites.teacher = teacher
    exp = Experiment(cfg, device, data, teacher, method, validator, suites, out_dir_for(cfg), placement)
    batches = train_batches(cfg, data, cfg.data.batch_size, placement.rank, placement.world_size)
    exp.engine = Engine(
        method,
        StepSource(batches, device, cfg.data.num_workers, cfg.data.degrade_on),
        device=device,
        lr_g=cfg.optim.lr_g,
        lr_d=cfg.optim.lr_d,
        betas=cfg.optim.betas,
        ema_decay=cfg.optim.ema,
        amp=cfg.optim.amp,
        channels_last=channels_last,
        checkpoint_dir=exp.out_dir / "checkpoints",
        checkpoint_every=cfg.run.checkpoint_every,
        log_every=cfg.run.log_every,
        evaluate=(lambda: stage_scores(exp)) if placement.writer else None,
        callbacks=callbacks,
        writer=placement.writer,
        max_d_loss=cfg.run.max_d_loss,
        metadata={"config": cfg.to_dict(), "config_hash": config_hash(cfg)},
    )
    exp.timings["setup_s"] = time.perf_counter() - started
    return exp


def stage_scores(exp: Experiment) -> dict[str, float]:
    """What a stage end scores: the student on the validation images, and on the suites that ask for it."""
    g = exp.engine.eval_generator()
    return exp.validator.student(g) | (exp.suites.stage_scores(g) if exp.suites else {})


def compile_nets(exp: Experiment, **options: Any) -> list[str]:
    """`torch.compile` (with `options`) the nets of `exp` that have a forward of their own, in place; returns their
    names. The D stays eager when the R1 penalty is on: R1 differentiates the D's input gradient again (a double
    backward), which compiled graphs do not support."""
    method, teacher = exp.method, exp.teacher
    r1 = exp.cfg.loss.r1.weight > 0
    nets: dict[str, nn.Module | None] = {name: net for name, net in method.nets.items() if not (r1 and name == "d")}
    nets |= {"perceptual": method.perceptual, "teacher.g": teacher.g if teacher else None}
    compiled = [name for name, net in nets.items() if net is not None and type(net).forward is not nn.Module.forward]
    for name in compiled:
        nets[name].compile(**options)
    return compiled

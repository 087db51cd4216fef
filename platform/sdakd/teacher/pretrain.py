"""Pretraining a teacher that has no weights: G with L1 + perceptual, then its D on GT vs the frozen G.

It runs as a method (not user-selectable) through the same engine as every student.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdakd.config.schema import ExperimentConfig
from sdakd.data.dataset import Dataset, train_batches
from sdakd.engine import ConsoleProgress, Engine, Stage
from sdakd.methods.base import REAL_FAKE, Method
from sdakd.models.from_config import discriminator, sr_generator

log = logging.getLogger("sdakd")


class PretrainTeacher(Method):
    name = "teacher_pretrain"
    uses_teacher = False

    def __init__(self, cfg: ExperimentConfig, generator: nn.Module, d: nn.Module, train_g: bool = True) -> None:
        self._nets = {"student_g": generator, "d": d}
        self.train_g = train_g  # False: the G came from weights, only the D trains against it
        super().__init__(cfg, None)

    def build(self) -> dict[str, nn.Module]:
        return self._nets

    def stages(self) -> list[Stage]:
        p = self.cfg.teacher.pretrain
        return [
            Stage("teacher_g", p.iters if self.train_g else 0, g_loss={"pixel": 1.0, "perceptual": p.perceptual_weight}),
            Stage("teacher_d", p.d_iters, d_loss=REAL_FAKE),
        ]


def pretrain_teacher(
    cfg: ExperimentConfig, data: Dataset, device: torch.device, path: Path, g: nn.Module | None = None
) -> dict[str, Any]:
    """Train the teacher G, then its D (`g` given: only a D against that G); write them to `path` (atomically)
    and return them."""
    p = cfg.teacher.pretrain
    if g is None:
        log.info("no teacher weights configured: pretraining the teacher (%d G + %d D steps)", p.iters, p.d_iters)
    else:
        log.info("training the teacher D against the frozen teacher G (%d D steps)", p.d_iters)
    torch.manual_seed(cfg.seed)
    generator = g if g is not None else sr_generator(cfg)  # G's init drawn before D's, as the cached teachers were
    d = discriminator(cfg, 1.0)
    method = PretrainTeacher(cfg, generator, d, train_g=g is None).to(device)
    batches = train_batches(cfg, data, p.batch_size)
    engine = Engine(
        method,
        batches.__getitem__,
        device=device,
        lr_g=p.lr,
        lr_d=p.lr,
        betas=cfg.optim.betas,
        ema_decay=cfg.optim.ema if g is None else 0.0,
        amp=cfg.optim.amp,
        log_every=cfg.run.log_every,
        callbacks=[ConsoleProgress(prefix="teacher ")],
    )
    engine.run()
    trained = {"d": d} | ({"g": engine.eval_generator()} if g is None else {})
    state = {name: {k: v.cpu() for k, v in net.state_dict().items()} for name, net in trained.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    del engine, method, trained, d, generator
    if device.type == "cuda":  # a driver that pretrains once, then only waits on its trials, keeps no GPU memory
        gc.collect()
        torch.cuda.empty_cache()
    return state

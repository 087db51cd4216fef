"""The teacher a config names: its weights files, or a teacher pretrained here once and cached by the hash of
what it depends on (so every student of the same data and family shares one). And the inputs every run warms
up before it trains: the dataset and, for a method that distils, the teacher."""

from __future__ import annotations

import logging

import torch

from sdakd.config.identity import stable_hash
from sdakd.config.schema import ExperimentConfig
from sdakd.data.dataset import Dataset, ensure_dataset
from sdakd.methods import METHODS
from sdakd.models import load_weights
from sdakd.models.from_config import discriminator, sr_generator
from sdakd.teacher.frozen import Teacher
from sdakd.teacher.pretrain import pretrain_teacher

log = logging.getLogger("sdakd")


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
    g, d = sr_generator(cfg), discriminator(cfg, 1.0)
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


def prepare_inputs(cfg: ExperimentConfig, device: torch.device) -> tuple[Dataset, Teacher | None]:
    """The dataset and, for a method that distils from one, the teacher: built into the caches on first use (the
    bundled shards, a pretrained teacher), loaded from them afterwards."""
    data = ensure_dataset(cfg)
    return data, build_teacher(cfg, data, device) if METHODS.get(cfg.method).uses_teacher else None

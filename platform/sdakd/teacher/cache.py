"""The teacher a config names: its weights files (or a named teacher, converted into the cache), or a teacher
pretrained here once and cached by the hash of what it depends on (so every student of the same data and family
shares one); a D without weights is trained here against the frozen teacher G and cached the same way. And the
inputs every run warms up before it trains: the dataset and, for a method that distils, the teacher."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch

from sdakd.config.identity import stable_hash
from sdakd.config.schema import ExperimentConfig
from sdakd.data.dataset import Dataset, ensure_dataset
from sdakd.errors import SdakdError, load_failure
from sdakd.methods import METHODS
from sdakd.models import load_weights
from sdakd.models.from_config import discriminator, sr_generator
from sdakd.teacher.frozen import Teacher
from sdakd.files import sha256_of
from sdakd.teacher.named import NAMED, convert_named
from sdakd.teacher.pretrain import pretrain_teacher

log = logging.getLogger("sdakd")


def pretrain_key(cfg: ExperimentConfig, data: Dataset, g_weights: str | None = None) -> str:
    """Everything a teacher trained here depends on, and nothing else (so students share one teacher): the G and
    D it pretrains, or (`g_weights`: the sha256 of a G loaded from weights) the D it trains against that G."""
    teacher = cfg.teacher.model_dump(mode="json", exclude={"weights", "d_weights"})
    d = cfg.data
    # named only when set, so that the teachers cached before these fields existed keep their keys
    optional = {"scales": d.scales, "r1": cfg.loss.r1.weight, "g_weights": g_weights}
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


def weights_file(cfg: ExperimentConfig) -> tuple[Path, str, str | None]:
    """The configured generator weights (a named teacher converted into the cache first), what to call them, and
    their sha256 where the name already needed it (None for a plain path)."""
    weights = cfg.teacher.weights
    if not isinstance(weights, str):
        return Path(weights), str(weights), None
    fields = NAMED[weights].config_fields()
    differ = {k: v for k, v in fields.items() if getattr(cfg.teacher, k) != v}
    if differ:
        raise SdakdError(
            f"teacher.weights: {weights} is {fields}; the config says "
            + ", ".join(f"teacher.{k}={getattr(cfg.teacher, k)!r}" for k in differ)
        )
    path = convert_named(weights, cfg.run.cache_dir)
    digest = sha256_of(path)
    return path, f"{weights} (sha256 {digest[:12]})", digest


def cached_state(path: Path, train: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    if not path.exists():
        return train()
    log.info("%s loaded from the cache %s", what, path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever is wrong with the file, the fix is the same
        reason = load_failure(err)
        raise SdakdError(f"{what} cache {path} is unreadable ({reason}): delete it to train it again") from None
    if not isinstance(state, dict):
        raise SdakdError(f"{what} cache {path} holds no state dict: delete it to train it again")
    return state


def build_teacher(cfg: ExperimentConfig, data: Dataset, device: torch.device) -> Teacher:
    g, d = sr_generator(cfg), discriminator(cfg, 1.0)
    cache = cfg.run.cache_dir / "teachers"
    if cfg.teacher.weights is None:
        key = pretrain_key(cfg, data)
        state = cached_state(cache / f"{key}.pt", lambda: pretrain_teacher(cfg, data, device, cache / f"{key}.pt"),
                             f"teacher {key}")
        g.load_state_dict(state["g"])
        d.load_state_dict(state["d"])
        return Teacher(g, d, identity=f"pretrain-{key}", source="pretrained-here").to(device)

    path, identity, digest = weights_file(cfg)
    load_weights(g, path)
    if cfg.teacher.d_weights is not None:
        load_weights(d, cfg.teacher.d_weights)
        return Teacher(g, d, identity=identity, source="weights").to(device)
    # No released D (Real-ESRGAN ships none for most models): Real-ESRGAN's recipe, GT real vs the frozen G fake.
    key = pretrain_key(cfg, data, g_weights=digest or sha256_of(path))  # a 67 MB file is hashed once, not twice
    where = cache / f"d-{key}.pt"
    log.info("teacher.d_weights is not set: the teacher D is one trained here against the frozen teacher (cache %s)",
             where)
    state = cached_state(where, lambda: pretrain_teacher(cfg, data, device, where, g=g), f"teacher D {key}")
    d.load_state_dict(state["d"])
    return Teacher(g, d, identity=identity, source="weights", d_source="trained-here-against-teacher").to(device)


def scoring_teacher(cfg: ExperimentConfig, device: torch.device) -> Teacher | None:
    """For a method that trains without a teacher: the configured teacher's G alone, to score the student against
    it (the `_vs_teacher` metrics), when its weights are given; a teacher this platform would first have to train is
    not trained for a method that never uses it."""
    if cfg.teacher.weights is None:
        return None
    g = sr_generator(cfg)
    path, identity, _ = weights_file(cfg)
    load_weights(g, path)
    return Teacher(g, None, identity=identity, source="weights").to(device)


def scored_against_teacher(cfg: ExperimentConfig) -> bool:
    """Whether a run of `cfg` has a teacher to compare its student with (see `scoring_teacher`)."""
    return METHODS.get(cfg.method).uses_teacher or cfg.teacher.weights is not None


def prepare_inputs(cfg: ExperimentConfig, device: torch.device) -> tuple[Dataset, Teacher | None]:
    """The dataset and the teacher (G and D for a method that distils, G alone to score one that does not):
    built into the caches on first use (the bundled dataset, a pretrained teacher), loaded from them afterwards."""
    data = ensure_dataset(cfg)
    return data, run_teacher(cfg, data, device)


def run_teacher(cfg: ExperimentConfig, data: Dataset, device: torch.device) -> Teacher | None:
    """The teacher of `prepare_inputs`, for `data` already at hand."""
    if METHODS.get(cfg.method).uses_teacher:
        return build_teacher(cfg, data, device)
    return scoring_teacher(cfg, device)

"""The dataset a config names: its shards (or the bundled photos, built once into the cache) and its batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sdakd.config.schema import ExperimentConfig
from sdakd.data.loader import StepBatches
from sdakd.data.shards import build_dataset, load_manifest

log = logging.getLogger("sdakd")


@dataclass(frozen=True)
class Dataset:
    root: Path
    checksum: str


def ensure_dataset(cfg: ExperimentConfig) -> Dataset:
    """The configured shards, or the bundled photos built once into the cache folder."""
    root = cfg.data.root
    if root is None:
        root = cfg.run.cache_dir / "data" / "bundled"
        manifest = load_manifest(root) if (root / "manifest.json").exists() else None
        if manifest is None or not manifest["counts"].get("test"):
            # (a cache from before the held-out test split is rebuilt: same train and val images, a test added)
            log.info("building the bundled-photo dataset in %s", root)
            build_dataset(root, images_dir=None, min_side=cfg.data.gt_size)
            manifest = load_manifest(root)
    else:
        manifest = load_manifest(root)
    return Dataset(Path(root), manifest["checksum"])


def train_batches(
    cfg: ExperimentConfig, data: Dataset, batch_size: int, rank: int = 0, world_size: int = 1
) -> StepBatches:
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

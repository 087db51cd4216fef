"""The dataset a config names: a local store, a store at a URI (copied once per node), or the bundled photos (built
once into the cache); and its batches."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from sdakd.config.schema import ExperimentConfig
from sdakd.data.build import build_dataset
from sdakd.data.loader import StepBatches
from sdakd.data.remote import fetch_dataset, is_uri
from sdakd.data.store import FORMAT, MANIFEST, load_manifest

log = logging.getLogger("sdakd")


@dataclass(frozen=True)
class Dataset:
    root: Path
    checksum: str


def ensure_dataset(cfg: ExperimentConfig) -> Dataset:
    """The configured store (a URI's node-local copy), or the bundled photos built once into the cache folder."""
    root = cfg.data.root
    if root is None:
        root = cfg.run.cache_dir / "data" / "bundled"
        if not _current_bundled(root / MANIFEST):
            # a cache of an older format, or from before the held-out test split, is rebuilt from the same photos
            log.info("building the bundled-photo dataset in %s", root)
            build_dataset(root, images_dir=None, min_side=cfg.data.gt_size)
    elif is_uri(root):
        root = fetch_dataset(str(root), cfg.run.data_cache)
    manifest = load_manifest(root)
    return Dataset(Path(root), manifest["checksum"])


def _current_bundled(manifest: Path) -> bool:
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT and bool(data.get("counts", {}).get("test"))


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

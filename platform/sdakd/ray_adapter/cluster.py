"""Which Ray the CLI's commands run on (the cluster a Ray job or RAY_ADDRESS names, else a local one), and where
Ray keeps results and checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import ray

from sdakd.config.schema import ExperimentConfig

STORAGE_ENV = "SDAKD_STORAGE_PATH"  # a cluster sets it on every node (cluster.yaml)


def connect(dashboard: bool = False) -> bool:
    """Join or start Ray; True when this call started a local instance (the caller may shut it down).
    `dashboard`: a local instance serves the State API (Ray Train needs it to free a killed trial's workers)."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):  # set inside `ray job submit` entrypoints: an existing cluster's settings rule
        ray.init(configure_logging=False)
        return False
    ray.init(include_dashboard=dashboard, configure_logging=False)
    return True


def storage_root(cfg: ExperimentConfig) -> str | None:
    """Where Ray keeps results and checkpoints: `run.storage_path`, else env SDAKD_STORAGE_PATH, as an absolute
    path or a URI (s3://...); None when neither is set (each command then keeps them in its own folder)."""
    storage = cfg.run.storage_path or os.environ.get(STORAGE_ENV)
    if not storage:
        return None
    return storage if "://" in storage else str(Path(storage).expanduser().absolute())

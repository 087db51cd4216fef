"""Which Ray the CLI's commands run on: the cluster a Ray job (or RAY_ADDRESS) names, else a local one."""

from __future__ import annotations

import os

import ray


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

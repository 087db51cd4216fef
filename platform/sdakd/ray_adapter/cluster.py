"""Which Ray the CLI's commands run on (the cluster a Ray job or RAY_ADDRESS names, else a local one), whether a
worker group fits it, where Ray keeps results and checkpoints, and what a failed Ray task raised."""

from __future__ import annotations

import os
from pathlib import Path

import ray
from ray.exceptions import RayTaskError

from sdakd.config.schema import ExperimentConfig
from sdakd.errors import SdakdError

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


def check_fits(workers: int, cpus_per_worker: float, gpus_per_worker: float, local: bool, fix: str) -> None:
    """A worker group must fit the Ray it asks: a local instance started for this command never grows, so a group
    too big for it is refused (`fix` says how); a cluster may grow (an autoscaler), so there it is only said."""
    asked = {"CPU": workers * cpus_per_worker, "GPU": workers * gpus_per_worker}
    have = ray.cluster_resources()
    if all(need <= have.get(kind, 0) for kind, need in asked.items()):
        return
    text = (f"{workers} workers x ({cpus_per_worker:g} CPU, {gpus_per_worker:g} GPU) ask for {asked['CPU']:g} CPUs "
            f"and {asked['GPU']:g} GPUs; this Ray has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs")
    if not local:
        print(f"{text}: waiting for the cluster to grow (given up after run.max_failures retries)", flush=True)
        return
    raise SdakdError(f"{text} (a local Ray, started for this command: it cannot grow); {fix}, or run on a larger "
                     "cluster (RAY_ADDRESS)")


def alive_nodes() -> str:
    """The alive nodes of the Ray this process joined, with what each holds (CPU, GPU, custom resources)."""
    nodes = []
    for node in ray.nodes():
        if node["Alive"]:
            held = {k: v for k, v in node["Resources"].items() if "memory" not in k and not k.startswith("node:")}
            listed = ", ".join(f"{k}: {v:g}" for k, v in sorted(held.items()))
            nodes.append(f"{node['NodeManagerAddress']} {{{listed}}}")
    return "; ".join(nodes) or "none"


def raised(err: BaseException) -> BaseException:
    """The exception a task or trial raised, under the RayTaskError Ray hands back instead."""
    while isinstance(err, RayTaskError) and err.cause is not None:
        err = err.cause
    return err


def storage_root(cfg: ExperimentConfig) -> str | None:
    """Where Ray keeps results and checkpoints: `run.storage_path`, else env SDAKD_STORAGE_PATH, as an absolute
    path or a URI (s3://...); None when neither is set (each command then keeps them in its own folder)."""
    storage = cfg.run.storage_path or os.environ.get(STORAGE_ENV)
    if not storage:
        return None
    return storage if "://" in storage else str(Path(storage).expanduser().absolute())

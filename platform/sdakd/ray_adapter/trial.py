"""A multi-worker search trial: `sdakd.search.trial.run_trial` on every Ray Train worker, inside a Tune trial.

The Tune trial's function calls `tune_trial`, which runs a TorchTrainer and blocks until it ends. Each worker
reports every stage end with `ray.train.report` (rank 0 attaches the stage checkpoint); Ray Tune's
TuneReportCallback forwards rank 0's report to the Tune trial, where ASHA and Optuna see it as they see a
1-worker trial's. A trial that Tune restores after a driver restart runs a trainer of the same name in the same
storage: Ray Train finds the run and hands its workers the latest stage checkpoint.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import ray
import ray.train
import torch
from ray.tune.integration.ray_train import TuneReportCallback  # imported by name: Ray does not re-export it

from sdakd.config.schema import ExperimentConfig
from sdakd.experiment import Experiment, Placement
from sdakd.ray_adapter.train import Worker, report_to_ray, with_absolute_paths
from sdakd.ray_adapter.trainer import check_whole_gpus, make_trainer
from sdakd.search.trial import run_trial


def trial_loop(config: dict[str, Any]) -> None:
    """One worker of a trial: the prefix cache, stage reports and checkpoints as in a 1-worker trial."""
    worker = Worker.start(config)
    checkpoint = ray.train.get_checkpoint()  # a restarted worker group, or a trial restored by Tune
    with checkpoint.as_directory() if checkpoint else nullcontext() as folder:
        resume = next(Path(folder).glob("*.pt")) if folder else None
        run_trial(
            worker.cfg,
            report_to_ray,
            prefix_cache=config["prefix_cache"],
            resume=resume,
            on_final=config["on_final"],
            placement=worker.placement,
            command=config["command"],
        )


def one_worker_placement() -> Placement:
    """Where a 1-worker trial trains: on the CPU when Ray gave it no GPU. Ray leaves CUDA_VISIBLE_DEVICES alone for
    a trial without GPUs, so `run.device: auto` would find every GPU and take GPU 0, unaccounted for."""
    return Placement() if ray.get_gpu_ids() else Placement(device=torch.device("cpu"))


def tune_trial(
    cfg: ExperimentConfig,
    *,
    name: str,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    prefix_cache: bool,
    default_storage: Path,
    on_final: Callable[[Experiment], None],
) -> None:
    """Train one trial on `workers` Ray Train workers, its reports going to the calling Tune trial; rank 0 calls
    `on_final` (pickled) as `run_trial` does. `name` identifies the trial's Train run in the storage root
    (`default_storage` when none is configured)."""
    check_whole_gpus(workers, gpus_per_worker, "resources.gpu")
    cfg = with_absolute_paths(cfg, default_storage)
    loop_config = {
        "config": cfg.to_dict(), "prefix_cache": prefix_cache, "on_final": on_final, "command": f"sdakd search  # {name}"
    }
    callbacks = [TuneReportCallback()]
    # A trial's workers may wait for the placement groups of trials Tune has just stopped (freed through the State
    # API, slowly on a loaded machine); the search checked before starting that one trial fits the cluster.
    make_trainer(trial_loop, loop_config, cfg, name, workers, cpus_per_worker, gpus_per_worker, callbacks,
                 startup_retries=-1).fit()

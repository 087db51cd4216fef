"""The TorchTrainer every multi-worker run goes through (`sdakd train --workers N`, a multi-worker search trial):
restarts from the last checkpoint, a divergence raised once instead of retried, one error for a worker group that
never starts (naming what it asked and what the cluster holds), and Ctrl-C that stops at once."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import ray
import ray.train
from ray.train.torch import TorchTrainer

from sdakd.config.schema import ExperimentConfig
from sdakd.engine.loop import Diverged
from sdakd.errors import SdakdError
from sdakd.ray_adapter.cluster import alive_nodes


def check_whole_gpus(workers: int, gpus_per_worker: float, field: str) -> None:
    """Several DDP workers need a whole GPU each: with a fraction, Ray packs two workers onto one GPU, whose two
    NCCL ranks NCCL refuses ("Duplicate GPU detected")."""
    if workers > 1 and gpus_per_worker != int(gpus_per_worker):
        raise SdakdError(f"{field}={gpus_per_worker:g} with {workers} workers: each worker needs whole GPUs (NCCL "
                         "runs one rank per GPU); allowed: 0 (CPU workers) or a whole number, usually 1")


def make_trainer(
    loop: Callable[[dict[str, Any]], Any],
    loop_config: dict[str, Any],
    cfg: ExperimentConfig,
    name: str,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    callbacks: Sequence[Any] = (),
    startup_retries: int | None = None,
    spread: bool = False,
) -> Trainer:
    """`loop` on `workers` workers, the run `name` kept in `cfg.run.storage_path` and restarted from its last
    checkpoint up to `run.max_failures` times; a worker group that does not start is retried `startup_retries`
    times (default: as often; -1: until it starts). `spread`: each worker on a node of its own (Ray's
    STRICT_SPREAD), else packed onto as few nodes as fit."""
    resources = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if gpus_per_worker else {})
    failures = cfg.run.max_failures
    startups = failures if startup_retries is None else startup_retries
    return Trainer(TorchTrainer(
        partial(stops_on_divergence, loop),
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources,
            placement_strategy="STRICT_SPREAD" if spread else "PACK",
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=cfg.run.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=failures, controller_failure_limit=startups),
            callbacks=list(callbacks),
        ),
    ), failures, f"{workers} workers x {resources}" + (" on separate nodes" if spread else ""))


DIVERGED = "sdakd.diverged"  # what a worker returns instead of its metrics when the run diverged


def stops_on_divergence(loop: Callable[[dict[str, Any]], Any], config: dict[str, Any]) -> Any:
    """`loop`, returning a divergence instead of raising it: every rank stops at the same step (the engine sees
    to it), and Ray Train restarts a group that raises, which would only diverge again."""
    try:
        return loop(config)
    except Diverged as err:
        return {DIVERGED: (err.record, err.file)}


@dataclass(frozen=True)
class Trainer:
    """A TorchTrainer whose `fit` raises a divergence as `Diverged` and a worker group that never started as one
    error, and stops at once on Ctrl-C (Ray Train's own handler waits on its controller and ignores a second
    Ctrl-C): the Ray this driver joined is shut down, which ends the controller and workers it owns."""

    trainer: TorchTrainer
    max_failures: int
    asked: str  # the worker group's resources, for the error when it cannot start

    def fit(self) -> ray.train.Result:
        outcome: dict[str, Any] = {}
        fitting = threading.Thread(target=self._fit, args=(outcome,), name="ray-train-fit", daemon=True)
        fitting.start()  # not in this thread: Ray Train installs its Ctrl-C handler only in the main thread
        try:
            while fitting.is_alive():
                fitting.join(0.2)
        except KeyboardInterrupt:
            print("interrupted: stopping the Ray Train run", file=sys.stderr, flush=True)
            ray.shutdown()
            raise
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
        if isinstance(result.return_value, dict) and DIVERGED in result.return_value:
            raise Diverged(*result.return_value[DIVERGED])
        return result

    def _fit(self, outcome: dict[str, Any]) -> None:
        try:
            outcome["result"] = self.trainer.fit()
        except ray.train.ControllerError as err:
            cause = str(err.controller_failure).split(". ")[0]  # Ray's first sentence; its guesses follow
            outcome["error"] = SdakdError(
                f"Ray Train stopped this run: {cause} (a worker group that does not start is retried "
                f"run.max_failures={self.max_failures} times); asked: {self.asked}; the cluster's nodes now: "
                f"{alive_nodes()}"
            )
        except BaseException as err:  # raised by `fit`, in the caller's thread
            outcome["error"] = err

"""`sdakd train --workers N`: the same engine under Ray Train's TorchTrainer, one process per worker.

Each worker re-validates the config and runs the run routine (`sdakd.pipeline.run`) for its rank, with the
trainable nets in DDP. Data needs no Ray Data: StepBatches hands rank r its slice of each step's global batch, so N workers
of batch B see exactly the pixels one worker of batch N*B sees, prepared in-process with no extra hop. Rank 0
writes the checkpoints, which Ray keeps in `run.storage_path` and hands back to a worker group restarted after a
failure, and the run's files (config.yaml, student.pt, metrics.json) in the run folder, as the local path does.

A group too big for a local Ray fails before it starts; one that does not start is retried `run.max_failures`
times; a divergence stops every rank at once and is raised on the driver, never retried (it would recur); Ctrl-C
stops the run at once.
"""

from __future__ import annotations

import datetime
import hashlib
import shlex
import sys
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import ray.train
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer

from sdakd.config.load import absolute_paths, validate, with_overrides
from sdakd.config.schema import ExperimentConfig
from sdakd.engine import Callbacks, ConsoleProgress, Position, Stage, unwrap
from sdakd.engine.checkpoint import linked_folder
from sdakd.engine.ddp import wrap_trainable
from sdakd.engine.loop import Diverged
from sdakd.errors import SdakdError
from sdakd.experiment import Experiment, Placement, out_dir_for
from sdakd.pipeline import resume_from, run
from sdakd.ray_adapter.cluster import check_fits, connect, storage_root
from sdakd.ray_adapter.faults import FailOnce, fault_from_env
from sdakd.run_folder import resume_point
from sdakd.teacher.cache import prepare_inputs


def with_absolute_paths(cfg: ExperimentConfig, default_storage: Path = Path("ray_results")) -> ExperimentConfig:
    """Every path absolute, the run folder and the Ray storage filled in: workers start in other folders than
    the driver (on other nodes, too: there these paths must name shared storage)."""
    storage = storage_root(cfg) or str(default_storage.absolute())
    return absolute_paths(with_overrides(cfg, {"run.out_dir": str(out_dir_for(cfg)), "run.storage_path": storage}))


class RayReport(Callbacks):
    """A report to Ray Train at every checkpoint, with the checkpoint (from rank 0) and the losses last logged.

    Every report carries a checkpoint, and a restarted worker group resumes from the latest one, so no global step
    is ever reported twice. A stage end emits on_checkpoint, then on_stage_end: the two make one report, which
    adds the stage's scores.
    """

    def __init__(self) -> None:
        self.losses: dict[str, float] = {}
        self.stage_end_checkpoint: Path | None = None

    def on_log(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None:
        self.losses = dict(metrics)

    def on_checkpoint(self, path: Path | None, position: Position, global_step: int) -> None:
        if position.step == 0:  # a stage end: its report waits for the scores in on_stage_end
            self.stage_end_checkpoint = path
        else:
            self._report(path, {"global_step": global_step})

    def on_stage_end(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None:
        self._report(self.stage_end_checkpoint, {"global_step": global_step, "stage_done": stage.name, **metrics})

    def _report(self, path: Path | None, metrics: dict[str, Any]) -> None:
        report_to_ray(metrics | self.losses, path)


def report_to_ray(metrics: dict[str, Any], path: Path | None) -> None:
    """`ray.train.report`, with the checkpoint file `path` when this rank wrote one. Ranks other than 0 write no
    checkpoint, but every rank reports equally often: the call is a barrier."""
    if path is None:
        ray.train.report(metrics)
        return
    with linked_folder(path) as folder:  # this checkpoint alone, not the stage copies beside it
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def ranks_agree(exp: Experiment) -> bool:
    """Whether every rank ends with the same weights (DDP should see to it; this checks it on every run)."""
    digest = hashlib.sha256()
    for net in [*map(unwrap, exp.method.nets.values()), exp.engine.eval_generator()]:
        for param in net.parameters():
            digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


@dataclass(frozen=True)
class Worker:
    """This process's place in the worker group, and the config it was sent."""

    placement: Placement
    cfg: ExperimentConfig

    @classmethod
    def start(cls, config: dict[str, Any]) -> Worker:
        """Read the group and the config; with several workers, rank 0 builds the bundled dataset and pretrains
        the teacher into the caches while the others wait (builds on several ranks at once would race on the
        same files), then the others load what rank 0 wrote."""
        context = ray.train.get_context()
        cfg = validate(config["config"], "the config sent to the Ray Train workers")
        rank, world_size, device = context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device()
        # one worker has no grads to average: it runs the nets bare, as the local path does
        prepare = partial(wrap_trainable, device=device) if world_size > 1 else None
        worker = cls(Placement(rank, world_size, device, prepare, writer=rank == 0), cfg)
        if world_size > 1:
            if rank == 0:
                prepare_inputs(cfg, device)
            dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)
        return worker


def _start(config: dict[str, Any]) -> Callable[[Experiment], None] | None:
    """Where a worker group starts: the checkpoint Ray hands a group restarted after a failure, else `resume`."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return resume_from(Path(config["resume"])) if config["resume"] else None

    def start(exp: Experiment) -> None:
        with checkpoint.as_directory() as folder:
            resume_from(Path(folder))(exp)

    return start


def train_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """One Ray Train worker; returns the final metrics on rank 0 (Ray hands them to the driver)."""
    worker = Worker.start(config)
    placement = worker.placement
    rank, world_size = placement.rank, placement.world_size
    callbacks: list[Callbacks] = [ConsoleProgress(prefix=f"rank 0/{world_size} ")] if rank == 0 else []
    callbacks += [*config["callbacks"], RayReport()]
    if config["fault"] and rank == world_size - 1:
        callbacks.append(FailOnce(**config["fault"]))

    def finish(exp: Experiment) -> dict[str, Any]:
        agree = ranks_agree(exp) if world_size > 1 else True
        return {"workers": world_size, "ranks_agree": agree} | config.get("warm_start", {})

    exp = run(worker.cfg, start=_start(config), placement=placement, callbacks=callbacks,
              command=config["command"], finish=finish)
    return exp.metrics


def train_distributed(
    cfg: ExperimentConfig,
    *,
    workers: int,
    gpus_per_worker: float = 0,
    cpus_per_worker: float = 1,
    resume: Path | bool | None = None,
    warm_start: bool = False,
    callbacks: Iterable[Callbacks] = (),
    command: str | None = None,
) -> ray.train.Result:
    """Train all stages on `workers` Ray Train workers; `result.return_value` holds the final metrics.

    Batch size is per worker. `resume` and `warm_start` work as in the local path (True: the run folder's last
    checkpoint); `resume` is used only when Ray has no checkpoint of this run yet. `callbacks` run on every rank
    (they are pickled).
    """
    if workers < 1 or gpus_per_worker < 0 or cpus_per_worker <= 0:
        raise SdakdError(
            f"workers={workers}, gpus_per_worker={gpus_per_worker}, cpus_per_worker={cpus_per_worker} are invalid; "
            "allowed: workers >= 1, gpus_per_worker >= 0, cpus_per_worker > 0"
        )
    check_whole_gpus(workers, gpus_per_worker, "--gpus-per-worker")
    cfg = with_absolute_paths(cfg)
    path, warm = resume_point(cfg, resume, warm_start)  # before Ray starts: a checkpoint of other networks fails here
    loop_config = {
        "config": cfg.to_dict(),
        "resume": str(path) if path else None,
        "warm_start": warm,
        "command": command or shlex.join(sys.argv),
        "callbacks": list(callbacks),
        "fault": fault_from_env(),
    }
    # A fresh Ray run name each time: Ray resumes a run whose name it finds in storage, and a new `sdakd train`
    # starts over, as locally (`resume` is the way to continue).
    name = f"{cfg.run.out_dir.name}-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}"
    started = connect(dashboard=True)  # as Ray Train's own start would (the State API frees killed workers)
    try:
        fix = "lower --workers, --cpus-per-worker or --gpus-per-worker"
        check_fits(workers, cpus_per_worker, gpus_per_worker, local=started, fix=fix)
        return make_trainer(train_loop, loop_config, cfg, name, workers, cpus_per_worker, gpus_per_worker).fit()
    finally:
        if started:
            ray.shutdown()


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
) -> Trainer:
    """`loop` on `workers` workers, the run `name` kept in `cfg.run.storage_path` and restarted from its last
    checkpoint up to `run.max_failures` times; a worker group that does not start is retried `startup_retries`
    times (default: as often; -1: until it starts)."""
    resources = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if gpus_per_worker else {})
    failures = cfg.run.max_failures
    startups = failures if startup_retries is None else startup_retries
    return Trainer(TorchTrainer(
        partial(stops_on_divergence, loop),
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=cfg.run.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=failures, controller_failure_limit=startups),
            callbacks=list(callbacks),
        ),
    ), failures)


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
            outcome["error"] = SdakdError(f"Ray Train stopped this run: {cause} (a worker group that does not start "
                                          f"is retried run.max_failures={self.max_failures} times)")
        except BaseException as err:  # raised by `fit`, in the caller's thread
            outcome["error"] = err

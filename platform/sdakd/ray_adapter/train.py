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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import ray.train
import torch
import torch.distributed as dist

from sdakd.config.load import absolute_paths, validate, with_overrides
from sdakd.config.schema import ExperimentConfig
from sdakd.engine import Callbacks, ConsoleProgress, Position, Stage, unwrap
from sdakd.engine.checkpoint import linked_folder
from sdakd.engine.ddp import wrap_trainable
from sdakd.errors import SdakdError
from sdakd.experiment import Experiment, Placement, out_dir_for
from sdakd.pipeline import resume_from, run
from sdakd.ray_adapter.cluster import check_fits, connect, storage_root
from sdakd.ray_adapter.faults import FailOnce, fault_from_env
from sdakd.ray_adapter.trainer import check_whole_gpus, make_trainer
from sdakd.run_folder import resume_point
from sdakd.teacher.cache import prepare_inputs


def with_absolute_paths(cfg: ExperimentConfig, default_storage: Path = Path("ray_results")) -> ExperimentConfig:
    """Every path absolute, the run folder and the Ray storage filled in: workers start in other folders than
    the driver (on other nodes, too: there these paths must name shared storage)."""
    storage = storage_root(cfg) or str(default_storage.absolute())
    return absolute_paths(with_overrides(cfg, {"run.out_dir": str(out_dir_for(cfg)), "run.storage_path": storage}))


Report = Callable[[dict[str, Any], "Path | None"], None]  # metrics, and the checkpoint file to attach (or None)


def report_file(report: Callable[..., None], metrics: dict[str, Any], path: Path | None) -> None:
    """`report` (ray.train.report or tune.report), with the checkpoint file `path` when this rank wrote one. Ranks
    other than 0 write no checkpoint, but every rank reports equally often: under Ray Train the call is a barrier."""
    if path is None:
        report(metrics)
        return
    with linked_folder(path) as folder:  # this checkpoint alone, not the stage copies beside it
        report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


report_to_ray = partial(report_file, ray.train.report)


class RayReport(Callbacks):
    """A report (to Ray Train, or through `report`) at every checkpoint, with the checkpoint (from rank 0) and the
    losses last logged.

    Every report carries a checkpoint, and a restarted worker group (a retried trial) resumes from the latest one,
    so no global step is ever reported twice. A stage end emits on_checkpoint, then on_stage_end: the two make one
    report, which adds the stage's scores.
    """

    def __init__(self, report: Report = report_to_ray) -> None:
        self.report = report
        self.losses: dict[str, float] = {}
        self.stage_end_checkpoint: Path | None = None

    def on_log(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None:
        self.losses = dict(metrics)

    def on_checkpoint(self, path: Path | None, position: Position, global_step: int) -> None:
        if position.step == 0:  # a stage end: its report waits for the scores in on_stage_end
            self.stage_end_checkpoint = path
        else:
            self.report({"global_step": global_step} | self.losses, path)

    def on_stage_end(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None:
        self.report({"global_step": global_step, "stage_done": stage.name, **metrics} | self.losses,
                    self.stage_end_checkpoint)


def ranks_agree(exp: Experiment) -> bool:
    """Whether every rank ends with the same weights (DDP should see to it; this checks it on every run)."""
    digest = hashlib.sha256()
    for net in [*map(unwrap, exp.method.nets.values()), exp.engine.eval_generator()]:
        for param in net.parameters():
            digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


def ray_node() -> str:
    return ray.get_runtime_context().get_node_id()


def rank_nodes() -> list[str]:
    """The Ray node id of every rank, by rank (which nodes the last worker group ran on)."""
    nodes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, ray_node())
    return nodes


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
        agree, nodes = (ranks_agree(exp), rank_nodes()) if world_size > 1 else (True, [ray_node()])
        return {"workers": world_size, "ranks_agree": agree, "nodes": nodes} | config.get("warm_start", {})

    exp = run(worker.cfg, start=_start(config), placement=placement, callbacks=callbacks,
              command=config["command"], finish=finish)
    return exp.metrics


def train_distributed(
    cfg: ExperimentConfig,
    *,
    workers: int,
    gpus_per_worker: float = 0,
    cpus_per_worker: float = 1,
    spread: bool = False,
    resume: Path | bool | None = None,
    warm_start: bool = False,
    callbacks: Iterable[Callbacks] = (),
    command: str | None = None,
) -> ray.train.Result:
    """Train all stages on `workers` Ray Train workers; `result.return_value` holds the final metrics.

    Batch size is per worker. `resume` and `warm_start` work as in the local path (True: the run folder's last
    checkpoint); `resume` is used only when Ray has no checkpoint of this run yet. `callbacks` run on every rank
    (they are pickled). `spread`: one worker per node (a group that cannot spread waits for nodes, then fails).
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
        return make_trainer(train_loop, loop_config, cfg, name, workers, cpus_per_worker, gpus_per_worker,
                            spread=spread).fit()
    finally:
        if started:
            ray.shutdown()

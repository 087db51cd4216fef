"""`sdakd train --workers N`: the same engine under Ray Train's TorchTrainer, one process per worker.

Each worker re-validates the config, builds the experiment for its rank and runs the stage loop with the trainable
nets in DDP. Data needs no Ray Data: StepBatches hands rank r its slice of each step's global batch, so N workers
of batch B see exactly the pixels one worker of batch N*B sees, prepared in-process with no extra hop. Rank 0
writes the checkpoints, which Ray keeps in `run.storage_path` and hands back to a worker group restarted after a
failure, and the run's files (config.yaml, student.pt, metrics.json) in the run folder, as the local path does.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shlex
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import ray.train
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer

from sdakd.config import ExperimentConfig, storage_root, validate, with_overrides
from sdakd.distributed.ddp import wrap_trainable
from sdakd.distributed.faults import FailOnce, fault_from_env
from sdakd.engine import Callbacks, Position, Stage, unwrap
from sdakd.errors import SdakdError
from sdakd.methods import METHODS
from sdakd.pipeline import (
    ConsoleProgress,
    Experiment,
    build_experiment,
    build_teacher,
    ensure_dataset,
    final_metrics,
    out_dir_for,
    write_run_files,
)

def with_absolute_paths(cfg: ExperimentConfig, default_storage: Path = Path("ray_results")) -> ExperimentConfig:
    """Every path absolute, the run folder and the Ray storage filled in: workers start in other folders than
    the driver (on other nodes, too: there these paths must name shared storage)."""
    storage = storage_root(cfg) or str(default_storage.absolute())
    cfg = with_overrides(cfg, {"run.out_dir": str(out_dir_for(cfg)), "run.storage_path": storage})

    def absolute(value: Any) -> Any:
        if isinstance(value, Path):
            return value.expanduser().absolute()
        if isinstance(value, dict):
            return {key: absolute(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(absolute(item) for item in value)
        return value

    return validate(absolute(cfg.model_dump()), "the config with absolute paths")  # python mode keeps Path types


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
    # Ray persists a folder: give it this checkpoint alone (not the stage copies beside it), by a link
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".ray-report-") as folder:
        os.link(path, Path(folder) / path.name)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def prepare_shared_files(cfg: ExperimentConfig, rank: int, device: torch.device) -> None:
    """Rank 0 builds the bundled dataset and pretrains the teacher into the cache while the others wait: builds
    on several ranks at once would race on the same files. The others then load what rank 0 wrote."""
    if rank == 0:
        data = ensure_dataset(cfg)
        if METHODS.get(cfg.method).uses_teacher:
            build_teacher(cfg, data, device)
    dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def ranks_agree(exp: Experiment) -> bool:
    """Whether every rank ends with the same weights (DDP should see to it; this checks it on every run)."""
    digest = hashlib.sha256()
    for net in [*map(unwrap, exp.method.nets.values()), exp.engine.eval_generator()]:
        for param in net.parameters():
            digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


def train_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """One Ray Train worker; returns the final metrics on rank 0 (Ray hands them to the driver)."""
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    cfg = validate(config["config"], "the config sent to the Ray Train workers")
    device = ray.train.torch.get_device()
    callbacks: list[Callbacks] = [ConsoleProgress(prefix=f"rank 0/{world_size} ")] if rank == 0 else []
    callbacks += [*config["callbacks"], RayReport()]
    if config["fault"] and rank == world_size - 1:
        callbacks.append(FailOnce(**config["fault"]))
    if world_size > 1:
        prepare_shared_files(cfg, rank, device)
    exp = build_experiment(
        cfg,
        rank=rank,
        world_size=world_size,
        device=device,
        # one worker has no grads to average: it runs the nets bare, as the local path does
        prepare=partial(wrap_trainable, device=device) if world_size > 1 else None,
        callbacks=callbacks,
        writer=rank == 0,
    )
    if rank == 0:
        write_run_files(exp, config["command"])
    checkpoint = ray.train.get_checkpoint()  # set when Ray restarts the worker group after a failure
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            exp.engine.resume(Path(folder))
    elif config["resume"]:
        exp.engine.resume(Path(config["resume"]))
    if rank == 0 and exp.engine.global_step():
        print(f"resumed at global step {exp.engine.global_step()}", flush=True)
    started = time.perf_counter()
    exp.engine.run()
    exp.timings["train_s"] = time.perf_counter() - started
    agree = ranks_agree(exp) if world_size > 1 else True
    if rank != 0:
        return None
    metrics = final_metrics(exp)
    metrics["info"] |= {"workers": world_size, "ranks_agree": agree}
    torch.save(exp.engine.eval_generator().state_dict(), exp.out_dir / "student.pt")
    (exp.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def train_distributed(
    cfg: ExperimentConfig,
    *,
    workers: int,
    gpus_per_worker: float = 0,
    cpus_per_worker: float = 1,
    resume: Path | bool | None = None,
    callbacks: Iterable[Callbacks] = (),
    command: str | None = None,
) -> ray.train.Result:
    """Train all stages on `workers` Ray Train workers; `result.return_value` holds the final metrics.

    Batch size is per worker. `resume` works as in the local path (True: the run folder's last checkpoint) and
    is used only when Ray has no checkpoint of this run yet. `callbacks` run on every rank (they are pickled).
    """
    if workers < 1 or gpus_per_worker < 0 or cpus_per_worker <= 0:
        raise SdakdError(
            f"workers={workers}, gpus_per_worker={gpus_per_worker}, cpus_per_worker={cpus_per_worker} are invalid; "
            "allowed: workers >= 1, gpus_per_worker >= 0, cpus_per_worker > 0"
        )
    cfg = with_absolute_paths(cfg)
    out_dir = cfg.run.out_dir
    if resume is True:
        resume = out_dir / "checkpoints"
    loop_config = {
        "config": cfg.to_dict(),
        "resume": str(Path(resume).absolute()) if resume else None,
        "command": command or shlex.join(sys.argv),
        "callbacks": list(callbacks),
        "fault": fault_from_env(),
    }
    # A fresh Ray run name each time: Ray resumes a run whose name it finds in storage, and a new `sdakd train`
    # starts over, as locally (`resume` is the way to continue).
    name = f"{out_dir.name}-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}"
    return make_trainer(train_loop, loop_config, cfg, name, workers, cpus_per_worker, gpus_per_worker).fit()


def make_trainer(
    loop: Callable[[dict[str, Any]], Any],
    loop_config: dict[str, Any],
    cfg: ExperimentConfig,
    name: str,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    callbacks: Sequence[Any] = (),
) -> TorchTrainer:
    """`loop` on `workers` workers, the run `name` kept in `cfg.run.storage_path` and restarted from its last
    checkpoint up to `run.max_failures` times."""
    resources = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if gpus_per_worker else {})
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=cfg.run.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            callbacks=list(callbacks),
        ),
    )

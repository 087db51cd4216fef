"""The one run routine: build -> write config and command -> start -> train -> save.

`sdakd train`, every Ray Train worker, every search trial and every grid cell go through `run`. They differ only
in how the run starts (`start`: fresh, a checkpoint, the stage-prefix cache), their place in a worker group
(`Placement`) and the callbacks that listen (progress, MLflow, Ray reports). Nothing here imports Ray or MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable

from sdakd.config.schema import ExperimentConfig
from sdakd.engine import Callbacks, ConsoleProgress
from sdakd.engine.loop import Diverged
from sdakd.experiment import Experiment, Placement, build_experiment
from sdakd.run_folder import resume_point, save_results, write_failure, write_run_files

Start = Callable[[Experiment], None]  # puts the engine where the run starts
Finish = Callable[[Experiment], dict[str, Any]]  # after training, on every rank: extra info for metrics.json


def resume_from(path: Path) -> Start:
    def start(exp: Experiment) -> None:
        done = exp.engine.resume(path)
        if exp.placement.writer:
            here = exp.engine.global_step()  # differs from `done` when a warm start changed the stage lengths
            counted = "" if here == done else f" (this config's stages count it as step {here})"
            print(f"resumed from {path} at global step {done}{counted}", flush=True)

    return start


def run(
    cfg: ExperimentConfig,
    *,
    start: Start | None = None,
    placement: Placement = Placement(),
    callbacks: Iterable[Callbacks] = (),
    command: str | None = None,
    finish: Finish | None = None,
    save: bool = True,
) -> Experiment:
    """Train the stages left after `start`; the writing rank saves metrics.json and student.pt (`save`), which
    `exp.metrics` then holds. The returned experiment keeps the trained nets for the caller (MLflow's logging).
    A run that diverges raises `Diverged` on every rank, once the writing rank has saved failed.json."""
    exp = build_experiment(cfg, placement, callbacks)
    if placement.writer:
        write_run_files(exp, command)
    if start is not None:
        start(exp)
    started = time.perf_counter()
    try:
        exp.engine.run()
    except Diverged as err:  # a failure of the run, recorded in its folder; callers hear one message
        raise Diverged(err.record, write_failure(exp, err.record) if placement.writer else None) from None
    exp.timings["train_s"] = time.perf_counter() - started
    info = finish(exp) if finish is not None else {}
    if save and placement.writer:
        exp.metrics = save_results(exp, **info)
    return exp


def train(
    cfg: ExperimentConfig,
    *,
    resume: Path | str | bool | None = None,
    warm_start: bool = False,
    callbacks: Iterable[Callbacks] = (),
    command: str | None = None,
) -> Experiment:
    """A local run in this process, with progress lines; `resume`: a checkpoint, or True for the run folder's.
    `warm_start`: the checkpoint may come from a config that differs in fields that decide the result (never in
    the networks); metrics.json records it."""
    path, warm = resume_point(cfg, resume, warm_start)  # before any data, teacher or network is built
    return run(cfg, start=resume_from(path) if path else None, callbacks=[ConsoleProgress(), *callbacks],
               command=command, finish=(lambda exp: warm) if warm else None)

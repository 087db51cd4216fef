"""One search trial, without Ray: the run routine (`sdakd.pipeline.run`) started from the longest cached stage
prefix, handing a report to `report` at every stage end (the Tune adapter forwards it to `ray.tune.report`).

A report holds the stage's eval metrics, the student's cost (MACs, params: objectives of a Pareto search), the
stage index, whether it is the trial's last stage, and how many iterations this process trained (the compute
the prefix cache saves shows up there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from sdakd.config.schema import ExperimentConfig
from sdakd.engine import Callbacks, Stage, unwrap
from sdakd.evaluate import count_params, macs
from sdakd.evaluate.validator import cost_side
from sdakd.experiment import Experiment, Placement
from sdakd.pipeline import Start, run
from sdakd.search.prefix import PrefixCache, changed_nets, snapshot, stage_keys

# metrics, and the stage checkpoint file to keep with them (None when the stage came from the cache)
Report = Callable[[dict[str, Any], Path | None], None]


def key_context(exp: Experiment) -> dict[str, Any]:
    """What decides a stage's result beside the config fields: the teacher, the data and (N workers of batch B
    train like one of batch N*B) the world size."""
    return {
        "teacher": exp.teacher.identity if exp.teacher else None,
        "data": exp.data.checksum,
        "world_size": exp.world_size,
    }


class StageReports(Callbacks):
    """Stores each finished stage in the prefix cache, then reports it."""

    def __init__(
        self,
        report: Report,
        cache: PrefixCache | None,
        writer: bool = True,
        on_final: Callable[[Experiment], None] | None = None,
    ) -> None:
        self.report = report
        self.cache = cache
        self.writer = writer  # under Ray Train, rank 0 alone stores stages and hands over their checkpoints
        self.on_final = on_final
        self.prefix_stages = 0
        self.start_step = 0

    def start(self, resume: Path | None) -> Start:
        """Where the trial starts: its own stage checkpoint (Tune already holds its reports up to there), else
        after the longest cached prefix, whose stages are reported as if trained here."""

        def start(exp: Experiment) -> None:
            self.attach(exp)
            engine = exp.engine
            if resume is not None:
                engine.resume(resume)
            elif self.cache is not None:
                self.prefix_stages = self.cache.load_longest(self.keys, engine)
            self.start_step = engine.global_step()
            for index, stage in enumerate(engine.stages[: self.prefix_stages]):
                if stage.iters:  # schedulers count one report per trained stage, cached or not
                    self.send(index, engine.history[stage.name], None)

        return start

    def attach(self, exp: Experiment) -> None:
        self.exp = exp
        self.initial = snapshot(exp.method.nets)  # before any load: what "changed by the prefix" is measured from
        student = unwrap(exp.method.nets["student_g"])
        side = cost_side(student)  # the same input as the ablation report's cost: fixed-size families need theirs
        self.cost = {"macs": macs(student, (1, 3, side, side)), "params": count_params(student)}
        self.keys = stage_keys(exp.cfg, exp.method, key_context(exp))

    def on_stage_end(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None:
        engine = self.exp.engine
        index = engine.position.stage - 1
        if self.writer and self.cache is not None and not self.cache.path(self.keys[index]).is_file():
            self.cache.store(self.keys[index], engine.state_dict(), changed_nets(engine.method.nets, self.initial))
        state_file = self.exp.out_dir / "checkpoints" / f"{stage.name}.pt"
        self.send(index, metrics, state_file if self.writer and state_file.is_file() else None)

    def send(self, index: int, metrics: Mapping[str, float], state_file: Path | None) -> None:
        payload = self.payload(index, metrics)
        # before the last report: a scheduler may end the trial inside that very call
        if payload["final"] and self.writer and self.on_final is not None:
            self.on_final(self.exp)
        self.report(payload, state_file)

    def payload(self, index: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        engine = self.exp.engine
        last = max(i for i, s in enumerate(engine.stages) if s.iters)
        return {
            **metrics,
            **self.cost,
            "stage": engine.stages[index].name,
            "stage_index": index,
            "stage_number": index + 1,  # ASHA's time: the same count whether a stage was trained or cached
            "final": index == last,
            "trained_iters": engine.global_step() - self.start_step,
            "prefix_stages": self.prefix_stages,
            "world_size": self.exp.world_size,
        }


def run_trial(
    cfg: ExperimentConfig,
    report: Report,
    *,
    prefix_cache: bool = True,
    resume: Path | None = None,
    on_final: Callable[[Experiment], None] | None = None,
    placement: Placement = Placement(),
    command: str | None = None,
) -> Experiment:
    """Train `cfg` through all its stages, reporting each; `resume` is a stage checkpoint of this same trial.
    `on_final(exp)` runs (on the writing rank) once the last stage is trained, before its report. A Ray Train
    worker passes its `placement` (rank, device, DDP wrapper)."""
    cache = PrefixCache(cfg.run.cache_dir) if prefix_cache else None
    reports = StageReports(report, cache, placement.writer, on_final)
    # Trials report their scores stage by stage; the final files (metrics.json, student.pt) are for full runs.
    return run(cfg, start=reports.start(resume), placement=placement, callbacks=[reports], command=command,
               save=False)

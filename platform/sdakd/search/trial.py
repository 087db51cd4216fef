"""One search trial, without Ray: build the experiment, start from the longest cached stage prefix, train the
rest, and hand a report to `report` at every stage end (the Tune adapter forwards it to `ray.tune.report`).

A report holds the stage's eval metrics, the student's cost (MACs, params: objectives of a Pareto search), the
stage index, whether it is the trial's last stage, and how many iterations this process trained (the compute
the prefix cache saves shows up there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from sdakd.config import ExperimentConfig
from sdakd.engine import Callbacks, Stage, unwrap
from sdakd.evaluate import count_params, macs
from sdakd.pipeline import COST_LR_SIZE, Experiment, build_experiment
from sdakd.search.prefix import PrefixCache, changed_nets, snapshot, stage_keys

# metrics, and the stage checkpoint file to keep with them (None when the stage came from the cache)
Report = Callable[[dict[str, Any], Path | None], None]


class StageReports(Callbacks):
    """Stores each finished stage in the prefix cache, then reports it."""

    def __init__(self, report: Report, cache: PrefixCache | None) -> None:
        self.report = report
        self.cache = cache
        self.prefix_stages = 0
        self.start_step = 0

    def attach(self, exp: Experiment) -> None:
        self.exp = exp
        self.initial = snapshot(exp.method.nets)  # before any load: what "changed by the prefix" is measured from
        student = unwrap(exp.method.nets["student_g"])
        self.cost = {"macs": macs(student, (1, 3, COST_LR_SIZE, COST_LR_SIZE)), "params": count_params(student)}
        context = {"teacher": exp.teacher.identity if exp.teacher else None, "data": exp.data.checksum}
        self.keys = stage_keys(exp.cfg, exp.method, context)

    def on_stage_end(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None:
        engine = self.exp.engine
        index = engine.position.stage - 1
        if self.cache is not None and not self.cache.path(self.keys[index]).is_file():
            self.cache.store(self.keys[index], engine.state_dict(), changed_nets(engine.method.nets, self.initial))
        state_file = self.exp.out_dir / "checkpoints" / f"{stage.name}.pt"
        self.report(self.payload(index, metrics), state_file if state_file.is_file() else None)

    def payload(self, index: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        engine = self.exp.engine
        last = max(i for i, s in enumerate(engine.stages) if s.iters)
        return {
            **metrics,
            **self.cost,
            "stage": engine.stages[index].name,
            "stage_index": index,
            "final": index == last,
            "trained_iters": engine.global_step() - self.start_step,
            "prefix_stages": self.prefix_stages,
        }


def run_trial(
    cfg: ExperimentConfig, report: Report, *, prefix_cache: bool = True, resume: Path | None = None
) -> Experiment:
    """Train `cfg` through all its stages, reporting each; `resume` is a stage checkpoint of this same trial."""
    reports = StageReports(report, PrefixCache(cfg.run.cache_dir) if prefix_cache else None)
    exp = build_experiment(cfg, callbacks=[reports])
    reports.attach(exp)
    engine = exp.engine
    if resume is not None:
        engine.resume(resume)  # Tune already holds this trial's reports up to here
    elif reports.cache is not None:
        reports.prefix_stages = reports.cache.load_longest(reports.keys, engine)
    reports.start_step = engine.global_step()
    for index, stage in enumerate(engine.stages[: reports.prefix_stages]):
        if stage.iters:  # schedulers count one report per trained stage, cached or not
            report(reports.payload(index, engine.history[stage.name]), None)
    engine.run()
    return exp

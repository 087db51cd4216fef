"""A search in MLflow: a parent run per search, a child run per trial, logged from the driver.

The driver sees every trial's reports and how it ended (finished, stopped by ASHA, errored), wherever the trial
ran, so it logs them (the Tune callback in `sdakd.ray_adapter.search` forwards to `TrialRuns`): a trial killed
with its node still gets its run closed. A resumed search (`--resume`) finds
its parent and its trials' runs by tag and logs on into them. Only pictures need the trained nets: a trial that
trains all its stages attaches its sample grid itself (`log_samples`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient

from sdakd.config.load import with_overrides
from sdakd.config.schema import ExperimentConfig
from sdakd.evaluate.registry import IMAGE_METRICS
from sdakd.search.space import Space, Suggest
from sdakd.search.summary import Summary, best_table
from sdakd.tracking import plots
from sdakd.tracking.run import TrackedRun, start_child_run
from sdakd.tracking.trials import TRIAL_ID, trial_child_run
from sdakd.tracking.store import Store

EXPERIMENT = "sdakd-searches"
ROLE = "search"
# Per stage report, at step = the stage's number, beside the stage's eval metrics.
PROGRESS = ("trained_iters", "prefix_stages")


@dataclass(frozen=True)
class SearchRun:
    """Where a search's runs live; picklable, so trials get it too."""

    uri: str
    experiment_id: str
    parent: str

    def trial_run(self, client: MlflowClient, trial_id: str) -> str | None:
        return trial_child_run(client, self.experiment_id, self.parent, trial_id)


def log_samples(search: SearchRun, trial_id: str, exp: Any) -> None:
    """In a trial that trained all its stages: its sample grid (LR | bicubic | student | teacher | GT) on its run."""
    client = MlflowClient(tracking_uri=search.uri)
    run_id = search.trial_run(client, trial_id)  # the driver made it when the trial started
    if run_id is None:
        print(f"trial {trial_id} has no MLflow run under {search.parent}: its sample grid is not logged", flush=True)
        return
    grid = plots.sample_grid(exp.validator, exp.out_dir / "samples.png", exp.engine.eval_generator())
    client.log_artifact(run_id, str(grid), "plots")


class TrialRuns:
    """Each trial as an MLflow child run of the search's parent run; trials are Tune's, passed as they are."""

    def __init__(self, search: SearchRun, space: Space, base: ExperimentConfig, tags: dict[str, str]) -> None:
        self.search = search
        self.space = space
        self.base = base
        self.tags = tags
        self.runs: dict[str, TrackedRun] = {}

    def __getstate__(self) -> dict[str, Any]:  # Tune snapshots its callbacks: clients and run handles stay here
        return {k: v for k, v in self.__dict__.items() if k != "runs"} | {"runs": {}}

    def run(self, trial: Any) -> TrackedRun:
        """The trial's run: known, found under the parent (a resumed search), or created."""
        if trial.trial_id not in self.runs:
            client = MlflowClient(tracking_uri=self.search.uri)
            cfg = with_overrides(self.base, Suggest.overrides(trial.config))
            tags = self.tags | {TRIAL_ID: trial.trial_id, "sdakd.optuna_trial": trial.config.get(Suggest.TRIAL_KEY)}
            search = self.search
            self.runs[trial.trial_id] = start_child_run(
                client, search.experiment_id, search.parent, f"trial-{trial.trial_id}", cfg, tags
            )
        return self.runs[trial.trial_id]

    def result(self, trial: Any, result: dict) -> None:
        tracker = self.run(trial)
        values = {f"eval/{k}": result[k] for k in IMAGE_METRICS if k in result}
        values |= {k: result[k] for k in PROGRESS}
        tracker.log_metrics(values, step=result["stage_number"])
        tracker.log_metrics({k: result[k] for k in ("macs", "params")})
        tracker.flush()

    def complete(self, trial: Any) -> None:
        tracker = self.runs.pop(trial.trial_id, None) or self.run(trial)
        final = bool((trial.last_result or {}).get("final"))
        tracker.set_tags({"sdakd.stopped_early": not final})
        tracker.finish("FINISHED" if final else "KILLED")

    def error(self, trial: Any) -> None:
        tracker = self.runs.pop(trial.trial_id, None) or self.run(trial)
        tracker.finish("FAILED")


def log_results(store: Store, parent: str, summary: Summary, storage: str) -> None:
    """On the search's parent run: trials.json, the best config(s), their table, and the study's plots."""
    folder, space = summary.folder, summary.space
    (folder / "best.md").write_text(best_table(summary))
    store.log_files(parent, [folder / "trials.json", folder / "best.md"])
    best_folder = "pareto" if len(space.objectives) > 1 else None
    store.log_files(parent, [Path(t["file"]) for t in summary.best], best_folder)
    study = optuna.load_study(study_name=space.name, storage=storage)
    pictures, missing = plots.study_plots(study, [o.metric for o in space.objectives], folder / "plots")
    if missing:  # said, not silently skipped
        (folder / "plots" / "not_drawn.txt").write_text("".join(f"{k}: {v}\n" for k, v in missing.items()))
        pictures.append(folder / "plots" / "not_drawn.txt")
    store.log_files(parent, pictures, "plots")

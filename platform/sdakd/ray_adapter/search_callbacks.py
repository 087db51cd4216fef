"""What a search's driver hears from Tune: one progress line per stage report and per finished trial, and each
trial's events forwarded to its MLflow run (sdakd.tracking.search.TrialRuns)."""

from __future__ import annotations

from typing import Any

from ray import tune

from sdakd.search.space import Space
from sdakd.tracking.search import TrialRuns


class Progress(tune.Callback):
    """One line per stage report and per finished trial, instead of Tune's status tables."""

    def __init__(self, space: Space) -> None:
        self.metrics = [o.metric for o in space.objectives]

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        scores = " ".join(f"{m}={result[m]:.4g}" for m in self.metrics)
        cached = f" (stages 1-{result['prefix_stages']} from the prefix cache)" if result["prefix_stages"] else ""
        print(f"trial {trial.trial_id} {result['stage']}: {scores} trained {result['trained_iters']} it{cached}",
              flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result
        how = "finished" if last.get("final") else f"stopped after {last.get('stage', 'no stage')}"
        print(f"trial {trial.trial_id} {how}", flush=True)


class TrialRunsCallback(tune.Callback):
    """Tune's trial events, forwarded to the search's MLflow runs."""

    def __init__(self, runs: TrialRuns) -> None:
        self.runs = runs

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.runs.run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.runs.result(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.runs.complete(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.runs.error(trial)

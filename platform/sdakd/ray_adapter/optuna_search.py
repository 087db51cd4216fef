"""The Optuna searcher a search runs under Tune: resumable after a killed driver, aware of the space's constraints."""

from __future__ import annotations

from typing import Any, Sequence

import optuna
from ray.tune.search.optuna import OptunaSearch

from sdakd.search.space import Constraint


class ResumableOptunaSearch(OptunaSearch):
    """A killed driver may have told Optuna a trial finished after the last experiment snapshot; on --resume Tune
    runs that trial on from its checkpoint and reports again. The study keeps its first, complete record.

    With constraints, each trial's violations (from its last report; <= 0: satisfied) are set on its Optuna trial
    (`Trial.set_constraint`) before Optuna hears it finished: the sampler prefers feasible trials."""

    def __init__(self, *args: Any, constraints: Sequence[Constraint] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.constraints = list(constraints)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._ot_trials:
            for i, c in enumerate(self.constraints):  # a trial that never reported the metric counts as infeasible
                value = c.violation(result[c.metric]) if result and c.metric in result else 1.0
                self._ot_trials[trial_id].set_constraint(f"{i}:{c.metric}", value)
        super().on_trial_complete(trial_id, result, error)

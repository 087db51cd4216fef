"""Retried trials, seen from the driver: a search trial or grid cell whose process or node died is run again by Tune
(up to `run.max_failures` times) from its last checkpoint. Each retry is one console line and two tags on the
trial's MLflow run (`sdakd.retries`, `sdakd.retries.<n>`: why); a trial that runs out of retries has its run closed
as FAILED, even when the process that should have closed it died with its node."""

from __future__ import annotations

import pickle
from typing import Any

from ray import tune

from sdakd.ray_adapter.cluster import raised
from sdakd.tracking.failures import failure
from sdakd.tracking.trials import close_lost_run, note_retry


def why(trial: Any) -> str:
    """What the trial's last attempt died of, in one line (Tune keeps the traceback in the trial's folder)."""
    if not trial.pickled_error_file:
        return "unknown (Tune recorded no error)"
    with open(trial.pickled_error_file, "rb") as file:
        return failure(raised(pickle.load(file)))[0]


class Retries(tune.Callback):
    """A line and tags per retry of a trial whose MLflow child run lives under `parent`; `what` names a trial in
    the line ("trial", "cell")."""

    def __init__(self, uri: str, experiment_id: str, parent: str, max_failures: int, what: str) -> None:
        self.run = (uri, experiment_id, parent)
        self.max_failures, self.what = max_failures, what

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        retry, reason = trial.run_metadata.num_failures, why(trial)
        budget = "unlimited" if self.max_failures < 0 else str(self.max_failures)
        print(f"{self.what} {trial.trial_id} failed ({reason}): retry {retry} of {budget} (run.max_failures), "
              "from its last checkpoint", flush=True)
        note_retry(*self.run, trial.trial_id, retry, reason)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        close_lost_run(*self.run, trial.trial_id, why(trial))

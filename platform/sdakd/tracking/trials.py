"""The MLflow runs of Ray Tune trials (search trials, grid cells): found by the trial id they are tagged with, one run
per trial however often Tune retries it; each retry noted on it, and a run whose trial ran out of retries closed."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from sdakd.tracking.failures import record_reason
from sdakd.tracking.store import quoted

TRIAL_ID = "sdakd.ray_trial_id"  # the Ray Tune trial a child run records (a search trial, a grid cell)
RETRIES = "sdakd.retries"  # how often Tune ran the trial again from its last checkpoint (a lost node, a crash)


def trial_child_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    """The child run of `parent_run_id` that the Ray Tune trial `trial_id` made, if it made one."""
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = {quoted(parent_run_id)} and tags.`{TRIAL_ID}` = {quoted(trial_id)}"
    found = client.search_runs([experiment_id], query, max_results=1)
    return found[0].info.run_id if found else None


def note_retry(uri: str, experiment_id: str, parent_run_id: str, trial_id: str, retry: int, reason: str) -> None:
    """On the run of a trial that Tune runs again: the retry count, and why retry `retry` was needed (no run: the
    attempt died before it made one)."""
    client = MlflowClient(tracking_uri=uri)
    if run_id := trial_child_run(client, experiment_id, parent_run_id, trial_id):
        client.set_tag(run_id, RETRIES, str(retry))
        client.set_tag(run_id, f"{RETRIES}.{retry}", reason[:5000])


def close_lost_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str, reason: str) -> None:
    """A trial that ran out of retries: its run FAILED with `reason` when it is still RUNNING (its process died with
    its node, so nothing else will close it)."""
    client = MlflowClient(tracking_uri=uri)
    run_id = trial_child_run(client, experiment_id, parent_run_id, trial_id)
    if run_id is not None and client.get_run(run_id).info.status == "RUNNING":
        record_reason(client, run_id, reason)
        client.set_terminated(run_id, "FAILED")

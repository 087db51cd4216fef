"""Why a run failed, on the run: the `sdakd.failure` tag (one line) and failed.json (the details)."""

from __future__ import annotations

import json
from typing import Any

from mlflow.tracking import MlflowClient

from sdakd.engine.loop import Diverged

FAILURE_TAG = "sdakd.failure"  # why a run failed, in one line; its failed.json artifact holds the details


def failure(err: BaseException) -> tuple[str, dict[str, Any] | None]:
    """Why a run failed, in one line, and a divergence's record (None for any other error)."""
    if isinstance(err, Diverged):
        return err.record["reason"], err.record
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first}".rstrip(": "), None


def record_failure(client: MlflowClient, run_id: str, err: BaseException) -> None:
    """The reason on the failed run: the tag, and failed.json (a divergence's record, else the reason alone)."""
    record_reason(client, run_id, *failure(err))


def record_reason(client: MlflowClient, run_id: str, reason: str, record: dict[str, Any] | None = None) -> None:
    client.set_tag(run_id, FAILURE_TAG, reason[:5000])  # below every store's tag limit
    client.log_text(run_id, json.dumps(record or {"reason": reason}, indent=2), "failed.json")

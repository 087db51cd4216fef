"""One trial or grid cell as an MLflow run nested under its parent: params, tags, metrics, artifacts.

Executors wrap the run routine like this (the engine never sees MLflow):

    with tracked_run(uri, experiment_id, parent_id, name, cfg, tags) as tracker:
        exp = train(cfg, callbacks=[tracker])
        tracker.on_done(exp, exp.metrics)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from typing import Any, Iterator, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from sdakd.config.identity import config_hash
from sdakd.config.schema import ExperimentConfig
from sdakd.engine import Callbacks, Stage
from sdakd.engine.loop import Diverged
from sdakd.tracking import plots
from sdakd.tracking.model import log_student_model
from sdakd.tracking.store import CONFIG_HASH, SEED

# Older tracking servers refuse longer param values; the full config is logged as config.yaml anyway.
PARAM_CHARS = 500
BATCH = 100  # MLflow's most params or tags per log_batch call
FLUSH_EVERY_S = 30.0  # losses reach the store at least this often (and at every stage end), not per log call
RUN_FILES = ("config.yaml", "command.txt", "metrics.json", "student.pt")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: config fields and metrics.json under their dotted paths."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, path + ".")
        else:
            flat[path] = value
    return flat


def numbers(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested mapping, flattened (booleans and strings are tags' business)."""
    return {
        k: float(v)
        for k, v in flatten(data, prefix).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def run_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """metrics.json's numbers under their dotted paths, except an evaluation suite's: `suite.<name>.<metric>` for
    the student's (and the references' `teacher_<metric>`, `bicubic_<metric>`), and
    `suite.<name>.per_image.<metric>.<image>`."""
    found = numbers({key: value for key, value in metrics.items() if key != "suites"})
    for name, suite in metrics.get("suites", {}).items():
        found |= numbers(suite["student"] | suite["references"] | {"per_image": suite["per_image"]}, f"suite.{name}.")
    return found


class TrackedRun(Callbacks):
    """Engine callbacks that log to one MLflow run; `on_done` adds final metrics, tags and artifacts."""

    def __init__(self, client: MlflowClient, run_id: str, devices: int = 1) -> None:
        self.client = client
        self.run_id = run_id
        self.devices = devices
        self.started = time.perf_counter()
        self.flushed = self.started
        self.pending: list[Metric] = []
        self.curves: dict[str, list[tuple[int, float]]] = {}
        self.stage_ends: list[tuple[str, int]] = []
        self.system: SystemMetricsMonitor | None = None

    def monitor_system(self) -> None:
        """MLflow's system metrics (`system/...`: CPU, memory, disk, network; GPU utilisation and memory where
        nvidia-ml-py, the `gpu` extra, finds a GPU) every 10 s while the run is RUNNING, so a starved GPU shows
        beside the losses. The samples describe the machine this process runs on."""
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not 3 lines per run on the console
        self.system = SystemMetricsMonitor(self.run_id, tracking_uri=self.client.tracking_uri)
        self.system.start()

    def stop_system(self) -> None:
        """Stop sampling, logging the samples taken since the last logged ones (a run shorter than the interval
        logs its first)."""
        monitor, self.system = self.system, None
        if monitor is None:
            return
        monitor.finish()
        if metrics := monitor.aggregate_metrics():
            monitor.publish_metrics(metrics)
            monitor.mlflow_logger.flush()

    def log_metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), now, step) for key, value in values.items()]

    def flush(self) -> None:
        for i in range(0, len(self.pending), BATCH * 10):
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + BATCH * 10])
        self.pending = []
        self.flushed = time.perf_counter()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + BATCH])

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + BATCH])

    # ------------------------------------------------------------------ engine callbacks
    def on_log(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.curves.setdefault(key, []).append((global_step, value))
        self.log_metrics(metrics, global_step)
        if time.perf_counter() - self.flushed > FLUSH_EVERY_S:
            self.flush()

    def on_stage_end(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None:
        self.stage_ends.append((stage.name, global_step))
        self.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, global_step)
        self.flush()

    # ------------------------------------------------------------------ the end of a run
    def on_done(self, exp: Any, metrics: Mapping[str, Any]) -> None:
        """Final numbers, what the run turned out to use, and its files (`exp` is sdakd.experiment.Experiment)."""
        info = metrics["info"]
        self.log_metrics(run_metrics(metrics))
        self.flush()
        self.set_tags(
            {
                "sdakd.dataset_checksum": info["dataset_checksum"],
                "sdakd.teacher": info["teacher"],
                "sdakd.teacher_source": info["teacher_source"],
                "sdakd.teacher_d_source": info["teacher_d_source"],
                "sdakd.lpips_pretrained": "lpips" in metrics["student"],
                "sdakd.device": info["device"],
            }
            | {f"sdakd.metric_weights.{name}": value for name, value in metrics["metric_weights"].items()}
            | {f"sdakd.unavailable.{name}": reason[:500] for name, reason in metrics["unavailable"].items()}
            | {f"sdakd.suite.{name}.lr_sha256": suite["lr_sha256"] for name, suite in metrics.get("suites", {}).items()}
        )
        folder = exp.out_dir
        for name in RUN_FILES:
            self.client.log_artifact(self.run_id, str(folder / name))
        pictures = [plots.sample_grid(exp.validator, folder / "samples.png", exp.engine.eval_generator())]
        if self.curves:
            pictures.append(plots.loss_curves(self.curves, self.stage_ends, folder / "loss_curves.png"))
        for path in pictures:
            self.client.log_artifact(self.run_id, str(path), "plots")
        log_student_model(self.client, self.run_id, exp)  # the student as an MLflow pyfunc model (model.py)

    def device_seconds(self) -> float:
        return (time.perf_counter() - self.started) * self.devices


def config_tags(cfg: ExperimentConfig) -> dict[str, Any]:
    return {
        "sdakd.method": cfg.method,
        CONFIG_HASH: config_hash(cfg),
        SEED: cfg.seed,
        "sdakd.perceptual_pretrained": cfg.loss.perceptual.vgg_weights is not None,
    }


TRIAL_ID = "sdakd.ray_trial_id"  # the Ray Tune trial a child run records (a search trial, a grid cell)
RETRIES = "sdakd.retries"  # how often Tune ran the trial again from its last checkpoint (a lost node, a crash)


def trial_child_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    """The child run of `parent_run_id` that the Ray Tune trial `trial_id` made, if it made one."""
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and tags.`{TRIAL_ID}` = '{trial_id}'"
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


def start_child_run(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    name: str,
    cfg: ExperimentConfig,
    tags: Mapping[str, Any] = (),
    devices: int = 1,
) -> TrackedRun:
    """A RUNNING child run of `parent_run_id`, tagged and with the whole config as params. With a Tune trial id
    among the tags, a run that an earlier attempt of that trial made (before a lost node or a crash) is taken up
    again instead, RUNNING once more: a retried trial stays one run."""
    if TRIAL_ID in tags and (found := trial_child_run(client, experiment_id, parent_run_id, str(tags[TRIAL_ID]))):
        client.update_run(found, status="RUNNING")
        tracker = TrackedRun(client, found, devices)
        tracker.monitor_system()
        return tracker
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={MLFLOW_PARENT_RUN_ID: parent_run_id, **{k: str(v) for k, v in (config_tags(cfg) | dict(tags)).items()}},
    )
    tracker = TrackedRun(client, run.info.run_id, devices)
    tracker.log_params(flatten(cfg.to_dict()))
    tracker.monitor_system()  # stops with `stop_system`, or by itself once the run is no longer RUNNING
    return tracker


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


@contextlib.contextmanager
def tracked_run(uri: str, *child: Any, **options: Any) -> Iterator[TrackedRun]:
    """The child run `start_child_run(client of uri, *child, **options)` makes; FINISHED, or FAILED/KILLED when
    the body raises (FAILED with the reason: `record_failure`).

    MlflowClient, not the fluent API: Ray reuses worker processes, and a leftover active run would leak into the
    next trial.
    """
    tracker = start_child_run(MlflowClient(tracking_uri=uri), *child, **options)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Exception as err:
        try:
            record_failure(tracker.client, tracker.run_id, err)
        except Exception as unlogged:  # the run's own error is the one to raise
            print(f"the failure of run {tracker.run_id} was not logged: {unlogged}", flush=True)
        raise
    finally:
        tracker.stop_system()
        tracker.log_metrics({"device_seconds": tracker.device_seconds()})
        tracker.flush()
        tracker.client.set_terminated(tracker.run_id, status)


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
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from sdakd.config.identity import config_hash
from sdakd.config.schema import ExperimentConfig
from sdakd.engine import Callbacks, Stage
from sdakd.tracking import plots
from sdakd.tracking.model import log_student_model
from sdakd.tracking.failures import failure, record_failure
from sdakd.tracking.outbox import Outbox
from sdakd.tracking.trials import TRIAL_ID, trial_child_run
from sdakd.tracking.store import CONFIG_HASH, SEED

# Older tracking servers refuse longer param values; the full config is logged as config.yaml anyway.
PARAM_CHARS = 500
BATCH = 100  # MLflow's most params or tags per log_batch call
FLUSH_EVERY_S = 30.0  # losses reach the store at least this often (and at every stage end), not per log call
RUN_FILES = ("config.yaml", "command.txt", "metrics.json", "student.pt")
UNLOGGED_FILE = "tracking_unlogged.json"  # in the run folder: what a tracking server that went away never got


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

    def __init__(self, client: MlflowClient, run_id: str, devices: int = 1, wait_s: float = 300,
                 unlogged: Path | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.wait_s, self.unlogged = wait_s, unlogged  # see `finish`
        self.outbox = Outbox(run_id)  # every call that logs goes through it: an unreachable server never blocks
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

        def stop() -> None:
            monitor.finish()
            if metrics := monitor.aggregate_metrics():
                monitor.publish_metrics(metrics)
                monitor.mlflow_logger.flush()

        self.outbox.put({"system_metrics": "the last samples"}, stop)

    def log_metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), now, step) for key, value in values.items()]

    def flush(self) -> None:
        for i in range(0, len(self.pending), BATCH * 10):
            chunk = self.pending[i : i + BATCH * 10]
            what = {"metrics": [[m.key, m.value, m.step, m.timestamp] for m in chunk]}
            self.outbox.put(what, partial(self.client.log_batch, self.run_id, metrics=chunk))
        self.pending = []
        self.flushed = time.perf_counter()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), BATCH):
            chunk = items[i : i + BATCH]
            what = {"tags": {t.key: t.value for t in chunk}}
            self.outbox.put(what, partial(self.client.log_batch, self.run_id, tags=chunk))

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            chunk = items[i : i + BATCH]
            what = {"params": {p.key: p.value for p in chunk}}
            self.outbox.put(what, partial(self.client.log_batch, self.run_id, params=chunk))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        what = {"artifact": str(path), "folder": folder}
        self.outbox.put(what, partial(self.client.log_artifact, self.run_id, str(path), folder))

    def finish(self, status: str) -> list[dict[str, Any]]:
        """End the run as `status` once everything before has been logged, waiting at most `wait_s` for an
        unreachable server; returns what was not logged, which the JSON file `unlogged` then lists too."""
        self.outbox.put({"status": status}, partial(self.client.set_terminated, self.run_id, status))
        lost = self.outbox.close(self.wait_s)
        if lost:
            where = ""
            if self.unlogged is not None:
                self.unlogged.write_text(json.dumps(
                    {"run_id": self.run_id, "tracking_uri": self.client.tracking_uri, "not_logged": lost}, indent=2))
                where = f", listed in {self.unlogged}"
            print(f"tracking lost: run {self.run_id} on {self.client.tracking_uri} did not answer for {self.wait_s:g} "
                  f"s: {len(lost)} calls not logged{where} (the run folder holds the results)", flush=True)
        return lost

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
            self.log_artifact(folder / name)
        pictures = [plots.sample_grid(exp.validator, folder / "samples.png", exp.engine.eval_generator())]
        if self.curves:
            pictures.append(plots.loss_curves(self.curves, self.stage_ends, folder / "loss_curves.png"))
        for path in pictures:
            self.log_artifact(path, "plots")
        # the student as an MLflow pyfunc model (model.py); the caller waits in `finish` while it is sent
        self.outbox.put({"model": "student"}, partial(log_student_model, self.client, self.run_id, exp))

    def device_seconds(self) -> float:
        return (time.perf_counter() - self.started) * self.devices


def config_tags(cfg: ExperimentConfig) -> dict[str, Any]:
    return {
        "sdakd.method": cfg.method,
        CONFIG_HASH: config_hash(cfg),
        SEED: cfg.seed,
        "sdakd.perceptual_pretrained": cfg.loss.perceptual.vgg_weights is not None,
    }


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
    again instead, RUNNING once more: a retried trial stays one run. Its end waits up to `run.tracking_wait_s` for
    a server that does not answer, then lists what it did not log in the run folder (`tracking_unlogged.json`)."""
    unlogged = cfg.run.out_dir / UNLOGGED_FILE if cfg.run.out_dir else None
    ending = {"wait_s": cfg.run.tracking_wait_s, "unlogged": unlogged}
    if TRIAL_ID in tags and (found := trial_child_run(client, experiment_id, parent_run_id, str(tags[TRIAL_ID]))):
        client.update_run(found, status="RUNNING")
        tracker = TrackedRun(client, found, devices, **ending)
        tracker.monitor_system()
        return tracker
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={MLFLOW_PARENT_RUN_ID: parent_run_id, **{k: str(v) for k, v in (config_tags(cfg) | dict(tags)).items()}},
    )
    tracker = TrackedRun(client, run.info.run_id, devices, **ending)
    tracker.log_params(flatten(cfg.to_dict()))
    tracker.monitor_system()  # stops with `stop_system`, or by itself once the run is no longer RUNNING
    return tracker


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
        tracker.outbox.put({"failure": failure(err)[0]}, partial(record_failure, tracker.client, tracker.run_id, err))
        raise
    finally:
        tracker.stop_system()
        tracker.log_metrics({"device_seconds": tracker.device_seconds()})
        tracker.flush()
        tracker.finish(status)


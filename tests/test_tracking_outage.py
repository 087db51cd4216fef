"""The MLflow server goes away in the middle of a tracked run (a grid cell's run, trained here without Ray): the real
`mlflow server` process is stopped after the first checkpoint, then started again on the same store a minute later,
or never. The training must go on at its own pace; what it logged meanwhile must arrive once the server is back, or
the run folder must list exactly what never arrived.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from local_processes import BIN, MlflowServer
from sdakd.config.load import load_config
from sdakd.engine import Callbacks
from sdakd.pipeline import train
from sdakd.tracking.run import UNLOGGED_FILE, tracked_run
from sdakd.tracking.store import Store

pytestmark = pytest.mark.slow

OUTAGE_S = 60
STEPS = 9
CELL = ["method=vanilla", "stages.s1.iters=3", "stages.s2.iters=3", "stages.s3.iters=3", "data.batch_size=2",
        "data.gt_size=32", "run.log_every=1", "run.checkpoint_every=1", "run.eval_max_images=2",
        "run.latency_repeats=1"]


@pytest.fixture
def server(tmp_path, monkeypatch):
    # One attempt per call (MLflow's client would retry each for about two minutes): the run's own retries are
    # what this tests, and each of them then takes a moment instead of minutes.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    server = MlflowServer(tmp_path, dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"))
    server.start()
    yield server
    server.stop()


class Outage(Callbacks):
    """Stops the server at the first checkpoint; starts it again `back_after` seconds later (None: never)."""

    def __init__(self, server: MlflowServer, back_after: float | None) -> None:
        self.server, self.back_after = server, back_after
        self.down_at: float | None = None
        self.back = threading.Thread(target=self._restart)

    def on_checkpoint(self, path, position, global_step) -> None:
        if self.down_at is None:
            self.server.stop()
            self.down_at = time.monotonic()
            if self.back_after is not None:
                self.back.start()

    def _restart(self) -> None:
        time.sleep(self.back_after)
        self.server.start()


def cell(tmp_path: Path, server: MlflowServer, *sets: str):
    store = Store(server.uri)
    experiment = store.experiment("outage")
    cfg = load_config("tiny", overrides=[*CELL, f"run.out_dir={tmp_path / 'run'}", f"run.cache_dir={tmp_path / 'c'}",
                                         *sets])
    return store.uri, experiment, store.parent(experiment, "grid", "outage"), cfg


def test_a_server_down_for_a_minute_delays_the_logging_not_the_training(server, tmp_path, capsys):
    uri, experiment, parent, cfg = cell(tmp_path, server)
    outage = Outage(server, back_after=OUTAGE_S)
    with tracked_run(uri, experiment, parent, "cell", cfg) as tracker:
        exp = train(cfg, callbacks=[tracker, outage])
        trained = time.monotonic() - outage.down_at
        tracker.on_done(exp, exp.metrics)
    logged = time.monotonic() - outage.down_at
    outage.back.join()
    assert trained < OUTAGE_S, trained  # the whole training ran while the server was down: it did not wait for it

    client = MlflowClient(server.uri)
    (run,) = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss/g_total")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))  # every step, once
    assert run.data.metrics["student.psnr_y"] == exp.metrics["student"]["psnr_y"]
    assert {"config.yaml", "metrics.json", "student.pt", "plots"} <= {a.path for a in client.list_artifacts(
        run.info.run_id)}
    assert not (tmp_path / "run" / UNLOGGED_FILE).exists()
    printed = capsys.readouterr().out
    assert f"tracking: run {run.info.run_id} cannot log" in printed and "logs again after" in printed
    print(f"outage {OUTAGE_S} s: training done {trained:.0f} s into it, the run complete on the server "
          f"{logged:.0f} s into it")


def test_a_server_gone_for_good_loses_the_tracking_not_the_run(server, tmp_path, capsys):
    uri, experiment, parent, cfg = cell(tmp_path, server, "run.tracking_wait_s=5")
    with tracked_run(uri, experiment, parent, "cell", cfg) as tracker:
        exp = train(cfg, callbacks=[tracker, Outage(server, back_after=None)])
        tracker.on_done(exp, exp.metrics)
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "metrics.json").read_text())["student"] == exp.metrics["student"]
    lost = json.loads((run_dir / UNLOGGED_FILE).read_text())
    assert lost["run_id"] == tracker.run_id and lost["tracking_uri"] == server.uri
    calls = lost["not_logged"]
    steps = sorted(m[2] for c in calls for m in c.get("metrics", []) if m[0] == "loss/g_total")
    assert steps == list(range(1, STEPS + 1)) or steps == list(range(2, STEPS + 1))  # step 1's may have gone out
    assert {"artifact": str(run_dir / "metrics.json"), "folder": None} in calls and calls[-1] == {"status": "FINISHED"}
    assert f"tracking lost: run {tracker.run_id}" in capsys.readouterr().out

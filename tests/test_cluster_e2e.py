"""This machine plays the cluster of cluster.yaml: a real `ray start --head`, a real `mlflow server` on a local
port, the two environment variables every node exports, and `ray job submit -- sdakd ...` through the Job API.

Both jobs must succeed, every run must land on the MLflow server (read back over HTTP), and Tune's checkpoints
must land under SDAKD_STORAGE_PATH. The test starts its processes in their own sessions and stops exactly those
process trees, by id, whatever happens.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from local_processes import BIN, MlflowServer, free_port, stop_tree, wait_for

pytestmark = pytest.mark.slow

SEARCH_TRIALS = 6  # search_spaces/smoke.yaml's samples


@pytest.fixture
def cluster(tmp_path):
    """MLflow server + Ray head on 127.0.0.1; yields (env, dashboard URL, tracking URI, storage path)."""
    mlflow_port, ray_port, dashboard_port = free_port(), free_port(), free_port()
    tracking_uri = f"http://127.0.0.1:{mlflow_port}"
    storage = tmp_path / "storage"
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        SDAKD_TRACKING_URI=tracking_uri,  # what cluster.yaml's ~/.sdakd_env exports on every node
        SDAKD_STORAGE_PATH=str(storage),
        # Ray's token auth, with this cluster's own token: the head, its jobs and the `ray job` CLI share it
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        OMP_NUM_THREADS="1",
    )
    env.pop("RAY_ADDRESS", None)
    # Ray's own folder for this cluster: `ray start` records its address there, where a later ray.init() of this
    # test session does not look (it would join this cluster, gone by then). Short: it holds Unix sockets.
    ray_temp = Path(tempfile.mkdtemp(prefix="sdakd-ray-", dir="/tmp"))
    started = []
    mlflow = MlflowServer(tmp_path, env, mlflow_port)
    try:
        mlflow.start()
        ray_log = tmp_path / "ray.log"
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", f"--port={ray_port}", "--num-cpus=2",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--include-dashboard=true",
             "--disable-usage-stats", f"--temp-dir={ray_temp}"],
            env=env, cwd=tmp_path, stdout=ray_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        started.append(head)
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        wait_for(f"{dashboard}/api/version", head, ray_log)
        yield env, dashboard, tracking_uri, storage
    finally:
        for process in reversed(started):
            stop_tree(process)
        mlflow.stop()
        shutil.rmtree(ray_temp, ignore_errors=True)


def submit(env: dict, dashboard: str, cwd: Path, *command: str) -> str:
    deadline = time.monotonic() + 300  # a loaded 2-core machine has taken over 2 minutes to start the agent
    while True:
        done = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--", *command],
            env=env, cwd=cwd, capture_output=True, text=True, timeout=900,
        )
        output = done.stdout + done.stderr
        # a head just started may not have its job agent yet (Ray: "please try again later"); nothing was submitted
        if "No available agent to submit job" not in output or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert done.returncode == 0 and "succeeded" in output, output[-6000:]
    return output


def children(client: MlflowClient, experiment: str, role: str) -> tuple[str, list]:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment} on the server"
    parents = client.search_runs([found.experiment_id], f"tags.`sdakd.role` = '{role}'")
    assert len(parents) == 1, parents
    parent = parents[0].info.run_id
    runs = client.search_runs([found.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'")
    return parent, runs


@pytest.mark.timeout(1500)
def test_ray_jobs_log_to_the_mlflow_server_and_checkpoint_to_the_storage_path(cluster, tmp_path):
    env, dashboard, tracking_uri, storage = cluster
    started = time.monotonic()
    submit(env, dashboard, tmp_path, "sdakd", "search", "smoke")
    searched = time.monotonic()
    submit(env, dashboard, tmp_path, "sdakd", "ablate", "smoke")
    ablated = time.monotonic()

    client = MlflowClient(tracking_uri=tracking_uri)  # over HTTP, from the server's own store
    parent, trials = children(client, "sdakd-searches", "search")
    assert client.get_run(parent).info.status == "FINISHED"
    assert len(trials) == SEARCH_TRIALS
    assert {r.info.status for r in trials} <= {"FINISHED", "KILLED"} and "FINISHED" in {r.info.status for r in trials}
    assert all("eval/psnr_y" in r.data.metrics for r in trials)
    assert {a.path for a in client.list_artifacts(parent)} >= {"trials.json", "best.md", "pareto", "plots"}

    parent, cells = children(client, "sdakd-ablations", "grid")
    assert client.get_run(parent).info.status == "FINISHED"
    assert sorted(r.data.tags["sdakd.cell"] for r in cells) == ["full", "no_fm", "vanilla"]
    for cell in cells:
        assert cell.info.status == "FINISHED" and cell.data.metrics["student.psnr_y"] > 0
        artifacts = {a.path for a in client.list_artifacts(cell.info.run_id)}
        assert {"config.yaml", "metrics.json", "student.pt"} <= artifacts  # uploaded through the server

    # Tune's experiments and checkpoints under SDAKD_STORAGE_PATH: the search's stage checkpoints (and its
    # resumable state), each cell's final training state and student
    assert (storage / "search-smoke" / "tuner.pkl").is_file()
    stage_checkpoints = list((storage / "search-smoke").glob("*/checkpoint_*/engine.pt"))
    assert len(stage_checkpoints) >= SEARCH_TRIALS
    [grid_experiment] = storage.glob("ablate-smoke-*")
    finals = list(grid_experiment.glob("*/checkpoint_*/last.pt"))
    assert len(finals) == 3 and all((f.parent / "student.pt").is_file() for f in finals)
    print(f"cluster e2e: search {searched - started:.0f} s, ablate {ablated - searched:.0f} s")

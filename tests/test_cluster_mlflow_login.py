"""cluster.yaml's MLflow login setting (SDAKD_MLFLOW_AUTH=basic-auth, docs/cluster.md "Network"), checked by running
the head's own MLflow command on this machine: loopback addresses and a free port, no AWS, no outside network."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from mlflow.exceptions import MlflowException
from test_cluster_config import run_env_writers, mlflow_command, prepared

from sdakd.tracking.store import Store


@pytest.mark.slow
def test_mlflow_login_refuses_anonymous_requests(tmp_path, monkeypatch):
    """cluster.yaml's own MLflow command, run here with the login turned on (SDAKD_MLFLOW_AUTH=basic-auth), its
    port moved to a free one and one HTTP worker instead of four (each imports MLflow for seconds): it binds exactly
    loopback + the head address (127.0.0.2 plays it), answers /health to anyone (the `ray up` check), refuses an API
    call without credentials (401) and takes the admin's, which sdakd's store sends from the environment that every
    node exports."""
    cfg, home, port = prepared("aws"), tmp_path / "head", free_port()
    home.mkdir()
    (home / "sdakd-venv").symlink_to(Path(sys.prefix))
    run_env_writers(cfg, "setup_commands", home, {})
    with (home / ".sdakd_env").open("a") as env_file:
        env_file.write("export SDAKD_HEAD_IP=127.0.0.2 SDAKD_MLFLOW_AUTH=basic-auth\n"
                       "export MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=s3cret-for-test\n")
    command = mlflow_command(cfg).replace("5000", str(port)).replace("--workers 4", "--workers 1")
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    subprocess.run(["bash", "-c", command], env=env, check=True, timeout=30)
    pid_file = home / "mlflow" / "server.pid"  # written by the detached session's first command
    for _ in range(100):
        if pid_file.is_file() and pid_file.read_text().strip():
            break
        time.sleep(0.1)
    group = int(pid_file.read_text())
    try:
        assert http_status(f"http://127.0.0.1:{port}/health", wait_s=90, log=home / "mlflow" / "server.log") == 200
        members = [psutil.Process(group), *psutil.Process(group).children(recursive=True)]
        listening = {(c.laddr.ip, c.laddr.port) for p in members for c in p.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {("127.0.0.1", port), ("127.0.0.2", port)}
        for host in ("127.0.0.1", "127.0.0.2"):
            api = f"http://{host}:{port}/api/2.0/mlflow/experiments/search?max_results=1"
            assert http_status(api) == 401
            assert http_status(api, auth=("admin", "s3cret-for-test")) == 200
            assert http_status(api, auth=("admin", "wrong")) == 401
        uri = f"http://127.0.0.2:{port}"
        with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
            Store(uri).experiment("cluster-login")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-for-test")
        store = Store(uri)
        assert store.client.get_experiment(store.experiment("cluster-login")).name == "cluster-login"
    finally:
        stop_group(group)


def stop_group(group: int) -> None:
    """SIGTERM a process group, SIGKILL after 10 s; quiet when it is already gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
            for _ in range(100):
                time.sleep(0.1)
                os.killpg(group, 0)
        except ProcessLookupError:
            return


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_status(url: str, auth: tuple[str, str] | None = None, wait_s: float = 0, log: Path | None = None) -> int:
    """The HTTP status `url` answers with (basic auth if given); retries a refused connection for `wait_s`."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # a worker's first call loads the app
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer: {log.read_text()[-3000:] if log else ''}") from None
            time.sleep(1)

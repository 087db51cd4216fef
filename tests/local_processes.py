"""Servers and Ray nodes a test starts on this machine, each in its own session, stopped by process id (the whole
tree, whatever happens): a free port, waiting for an HTTP answer, and a Ray cluster of several `ray start` nodes.

Everything listens on 127.0.0.1 and talks only to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args[:3]} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answered (Ray's dashboard wants the cluster's token)
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


def process_tree(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        return [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signal_all(tree: list[psutil.Process], sig: int) -> None:
    for proc in tree:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def stop_tree(process: subprocess.Popen) -> None:
    """SIGTERM the process and everything it started, then SIGKILL what is left after 20 s."""
    tree = process_tree(process)
    signal_all(tree, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=20)
    signal_all(alive, signal.SIGKILL)
    process.wait(timeout=10)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started at once: what a reclaimed machine does to its processes."""
    tree = process_tree(process)
    signal_all(tree, signal.SIGKILL)
    psutil.wait_procs(tree, timeout=20)
    process.wait(timeout=10)


def cluster_env(**extra: str) -> dict[str, str]:
    """The environment of a local cluster's nodes and clients: this venv's tools first, one thread per process,
    cluster.yaml's Ray settings (token auth with this cluster's own token, no per-node metrics exporter)."""
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        OMP_NUM_THREADS="1",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_enable_metrics_collection="0",
        # no Ray OOM killer: on this shared machine another job's memory would have Ray kill the test's workers
        RAY_memory_monitor_refresh_ms="0",
        **extra,
    )
    env.pop("RAY_ADDRESS", None)
    return env


class LocalCluster:
    """A Ray head and worker nodes, each a `ray start --block` of its own (own ports, own CPU count, a custom
    resource of 1 named after the node), on 127.0.0.1. `kill` takes a node down like a lost machine; `add` starts
    another, as an autoscaler would. `stop` ends every node still running."""

    # The GCS declares a node dead after 3 missed health checks of 1 s, not Ray's default 5 of 3 s: a lost node
    # costs the tests seconds, not half a minute.
    HEALTH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3, "health_check_timeout_ms": 1000}

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, env
        # Ray's own folders, one per node (a node's log monitor forwards every worker log in its folder to the
        # drivers: a shared one would print each line once per node). `ray start` records its address there, where
        # a later ray.init() of this test session does not look. Short: they hold Unix sockets.
        self.temp = Path(tempfile.mkdtemp(prefix="sdakd-ray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = ""
        self.nodes: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, cpus: int, *flags: str) -> subprocess.Popen:
        log = self.folder / f"ray-{name}.log"
        process = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
             "--num-gpus=0", f"--resources={json.dumps({name: 1})}", f"--object-manager-port={free_port()}",
             f"--node-manager-port={free_port()}", "--object-store-memory=100000000", "--disable-usage-stats",
             *flags],
            env=self.env, cwd=self.folder, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.nodes[name] = process
        return process

    def start_head(self, cpus: int = 0) -> None:
        """The head: GCS, dashboard (the State API Ray Train uses) on 127.0.0.1; `cpus` 0 keeps work off it."""
        dashboard_port = free_port()
        self.dashboard = f"http://127.0.0.1:{dashboard_port}"
        head = self._start(
            "head", cpus, "--head", f"--port={self.port}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}", "--include-dashboard=true", f"--temp-dir={self.temp / 'head'}",
            f"--system-config={json.dumps(self.HEALTH)}",
        )
        wait_for(f"{self.dashboard}/api/version", head, self.folder / "ray-head.log")

    def add(self, name: str, cpus: int) -> None:
        """A worker node joining the head; returns once the cluster lists it alive."""
        self._start(name, cpus, f"--address={self.address}", f"--temp-dir={self.temp / name}")
        self.wait_until(lambda alive: name in alive, f"node {name} to join")

    def kill(self, name: str) -> None:
        """The node's raylet and every process on it killed at once; returns once the cluster has noticed."""
        kill_tree(self.nodes.pop(name))
        self.wait_until(lambda alive: name not in alive, f"the cluster to notice that {name} is gone")

    def wait_until(self, condition, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.alive()):
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout} s for {what}")
            time.sleep(0.5)

    @staticmethod
    def alive() -> set[str]:
        """Every resource name of the nodes the cluster holds alive (a node's own name among them), as the test's
        Ray connection sees them."""
        import ray

        return {key for node in ray.nodes() if node["Alive"] for key in node["Resources"]}

    def stop(self) -> None:
        for process in reversed(list(self.nodes.values())):
            stop_tree(process)
        self.nodes.clear()
        shutil.rmtree(self.temp, ignore_errors=True)


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1:`port`, its store (sqlite + artifacts) in `folder`/mlflow: `start` again
    after `stop` serves the same runs, as a restarted tracking server does."""

    def __init__(self, folder: Path, env: dict[str, str], port: int | None = None) -> None:
        self.folder, self.env = folder, dict(env, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        (folder / "mlflow").mkdir(exist_ok=True)

    def start(self) -> None:
        log = self.folder / "mlflow.log"
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow' / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "mlflow" / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            env=self.env, cwd=self.folder, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(f"{self.uri}/health", self.process, log)

    def stop(self) -> None:
        if self.process is not None:
            stop_tree(self.process)
            self.process = None

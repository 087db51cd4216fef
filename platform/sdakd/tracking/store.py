"""Which MLflow store, is it reachable, and the parent runs that group trials and grid cells.

One absolute tracking URI serves every process (the CLI, Ray workers whose cwd is a trial folder, `mlflow ui`):
CLI `--tracking-uri` > env SDAKD_TRACKING_URI > the config's `run.tracking_uri` > sqlite:///<cwd>/mlflow.db.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

from sdakd.config.project import REPO_ROOT
from sdakd.errors import SdakdError, shown

URI_ENV = "SDAKD_TRACKING_URI"
DEFAULT_DB = "mlflow.db"
REACH_TIMEOUT_S = 3.0
SERVER_SCHEMES = ("http://", "https://")
STORE_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")  # MLflow's
# Tags this package reads back; the rest are for people browsing the UI.
ROLE, GROUP, SEED = "sdakd.role", "sdakd.group", "sdakd.seed"
CONFIG_HASH = "sdakd.config_hash"  # a cell x seed: what `ablate` skips when finished
CELL_KEY = "sdakd.cell_key"  # a cell across seeds: a row of the report


def quoted(value: str) -> str:
    """`value` as a string in an MLflow search filter, which takes 'x' or "x" and no escapes within them."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise SdakdError(f"{shown(value)} holds both ' and \": MLflow's run search cannot match it; rename it")


def resolve_uri(cli: str | None = None, configured: str | None = None) -> str:
    """The store every process uses, made absolute (a relative sqlite path would follow each worker's cwd)."""
    uri = cli or os.environ.get(URI_ENV) or configured or DEFAULT_DB
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).expanduser().resolve()}"
    if "://" not in uri:
        return f"sqlite:///{Path(uri).expanduser().resolve()}"
    scheme = uri.split("://", 1)[0].split("+", 1)[0]  # postgresql+psycopg2:// is a postgresql store
    if scheme not in STORE_SCHEMES:
        others = ", ".join(f"{s}://" for s in STORE_SCHEMES[3:])
        raise SdakdError(
            f"tracking URI {uri}: unknown scheme {scheme!r}; allowed: sqlite:///PATH, http(s)://HOST:PORT, "
            f"{others}, or a plain path (an SQLite file)"
        )
    return uri


def check_reachable(uri: str) -> None:
    """Fail in seconds, before any training, when a tracking server does not answer."""
    if not uri.startswith(SERVER_SCHEMES):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=REACH_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # it answered: reachable, whatever it thinks of /health
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise SdakdError(
            f"tracking server {uri} is unreachable ({reason}); start it, or pick another store with "
            f"--tracking-uri or {URI_ENV} (default: sqlite:///<cwd>/{DEFAULT_DB})"
        ) from None


def check_port_free(port: int) -> None:
    """Refuse a port something already listens on, before the UI prints its address (a browser would find that
    other server there)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no owner
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise SdakdError(f"port {port} on 127.0.0.1 is taken ({err.strerror}): stop what listens there, or pick "
                             "another with --port") from None


def serve_ui(uri: str, port: int) -> int:
    """The MLflow UI on 127.0.0.1:port for a local store, until it exits or this process gets SIGTERM or SIGINT,
    which end the server's whole process group (it runs its HTTP workers as children); returns its exit code."""
    # The server's job runner (GenAI judges, several worker processes) has nothing to do for training runs.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    server = ["mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    return run_process_group([sys.executable, "-m", *server, "--workers", "1"])


def run_process_group(argv: list[str], grace_s: float = 10.0) -> int:
    """Run `argv` as the leader of its own process group; SIGTERM or SIGINT here ends the whole group (SIGKILL
    for what is left after `grace_s`). Returns its exit code, 0 when stopped by such a signal."""
    child = subprocess.Popen(argv, start_new_session=True)
    stopped: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopped.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)

    handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
        _end_group(child.pid, grace_s)  # children that outlived their leader
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0 if stopped else code


def _end_group(group: int, grace_s: float) -> None:
    """SIGTERM to what is left of a process group, SIGKILL after `grace_s`; returns once it is gone (or 2 s after
    the SIGKILL: a zombie nobody reaps never goes)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        deadline = time.monotonic() + wait_s
        try:
            os.killpg(group, sig)
            while time.monotonic() < deadline:
                time.sleep(0.1)
                os.killpg(group, 0)
        except ProcessLookupError:
            return


def git_tags() -> dict[str, str]:
    """The source checkout's commit and whether it had uncommitted changes ("unknown" without git)."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {MLFLOW_GIT_COMMIT: git("rev-parse", "HEAD"), "sdakd.git_dirty": str(bool(git("status", "--porcelain")))}
    except (OSError, subprocess.SubprocessError):
        return {MLFLOW_GIT_COMMIT: "unknown", "sdakd.git_dirty": "unknown"}


class Store:
    """A checked MLflow store: experiments, parent runs found by tag, and their child runs."""

    def __init__(self, uri: str) -> None:
        check_reachable(uri)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    def experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # Local stores keep artifacts beside the database, so the UI and every worker find them at one path.
        location = None
        if self.uri.startswith("sqlite:///"):
            location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def _parent(self, experiment_id: str, role: str, group: str) -> Run | None:
        query = f"tags.`{ROLE}` = {quoted(role)} and tags.`{GROUP}` = {quoted(group)}"
        runs = self.client.search_runs([experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def parent(self, experiment_id: str, role: str, group: str, reuse: bool = True) -> str:
        """The parent run of (role, group), e.g. ("grid", "components"): the latest one, reused and marked running
        again, or (`reuse=False`) a new one that later lookups find first."""
        found = self._parent(experiment_id, role, group) if reuse else None
        if found is not None:
            self.client.update_run(found.info.run_id, status="RUNNING")
            return found.info.run_id
        run = self.client.create_run(experiment_id, run_name=f"{role}:{group}", tags={ROLE: role, GROUP: group})
        return run.info.run_id

    def find_parent(self, experiment_name: str, role: str, group: str) -> str | None:
        """The parent run's id, without creating anything (None when the group never ran here)."""
        found = self.client.get_experiment_by_name(experiment_name)
        run = self._parent(found.experiment_id, role, group) if found is not None else None
        return run.info.run_id if run is not None else None

    def finished(self, parent: str) -> list[dict[str, Any]]:
        """The parent's FINISHED child runs (all pages) as plain records: run id, end time, tags, last metrics."""
        return self.children(parent, "FINISHED")

    def children(self, parent: str, status: str) -> list[dict[str, Any]]:
        """The parent's child runs in `status` (RUNNING, FINISHED, ...), as `finished` lists them."""
        run = self.client.get_run(parent)
        query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = {quoted(parent)} and attributes.status = {quoted(status)}"
        records, token = [], None
        while True:
            page = self.client.search_runs([run.info.experiment_id], query, page_token=token)
            records += [
                {"run_id": r.info.run_id, "end_time": r.info.end_time, "tags": r.data.tags, "metrics": r.data.metrics}
                for r in page
            ]
            token = page.token
            if not token:
                return records

    def finished_hashes(self, parent: str) -> set[str]:
        return {r["tags"].get(CONFIG_HASH) for r in self.finished(parent)}

    def close(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def log_files(self, run_id: str, paths: list[Path], folder: str | None = None) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path), folder)

    def ui_hint(self, experiment_id: str, run_id: str) -> str:
        """How to open a run's page (a parent's page lists its child runs) in the MLflow UI."""
        page = run_page(experiment_id, run_id)
        if self.uri.startswith(SERVER_SCHEMES):
            return f"browse the runs: open {self.uri.rstrip('/')}/{page}"
        return f"browse the runs: sdakd ui --tracking-uri {self.uri}  (then open http://127.0.0.1:5000/{page})"


def run_page(experiment_id: str, run_id: str) -> str:
    # MLflow 3's UI opens on its GenAI views unless told this is model training.
    return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"

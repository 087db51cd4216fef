"""One lock per grid cell (its config hash): two drivers never train the same cell at once, and a RUNNING child run
whose driver is gone is told from one still training.

An `sdakd ablate` driver holds an exclusive flock on `<locks>/<config hash>.lock` for each cell it trains, from
before it looks at what finished until its cells are done. A flock dies with its process, so a RUNNING run whose
lock nobody holds lost its driver (power loss, kill -9): it is marked FAILED, with the reason, and runs again.
Locks live beside a local SQLite store (every driver writing it sees them); for a server store, in the user's
cache on this machine (where a cluster's drivers run: on its head).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, Mapping

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from sdakd.config.identity import stable_hash
from sdakd.tracking.failures import record_reason
from sdakd.tracking.store import CONFIG_HASH, Store


def lock_folder(uri: str) -> Path:
    """Where the drivers of the store at `uri` lock cells."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return db.parent / f"{db.name}.locks"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "sdakd" / "locks" / stable_hash(uri)


class CellLocks:
    """This process's flocks, by key (a config hash), in `folder`: held until released or the process ends. A
    flock taken on another open of the same file conflicts even within one process."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.held: dict[str, IO[str]] = {}

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.lock"

    def take(self, key: str, block: bool) -> bool:
        """Hold `key`'s lock, waiting for it if `block`; False when another holds it and not `block`."""
        file = open(self.path(key), "a")  # never deleted: removing a lock file races with its next user
        try:
            fcntl.flock(file, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            file.close()
            return False
        self.held[key] = file
        return True

    def held_elsewhere(self, key: str) -> bool:
        """Whether another open of `key`'s lock file (another driver) holds it now."""
        if key in self.held:
            return False
        if not self.take(key, block=False):
            return True
        self.release(key)
        return False

    def release(self, key: str) -> None:
        self.held.pop(key).close()  # closing the only open of the file drops its flock

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)


def claim_cells(store: Store, parent: str, cells: Mapping[str, str], locks: CellLocks, force: bool) -> set[str]:
    """Lock the cells (config hash -> run name), waiting for those another driver trains; close the parent's runs
    that lost their driver; return the hashes to train, still locked: those with no FINISHED run under `parent`
    (all of them with `force`). The other locks are released."""
    for key in sorted(cells):  # every driver locks in one order: none waits on another that waits on it
        if not locks.take(key, block=False):
            print(f"{cells[key]}: another driver is training this cell (lock {locks.path(key)}); waiting for it",
                  flush=True)
            locks.take(key, block=True)
    fail_abandoned(store, parent, locks)
    done = set() if force else store.finished_hashes(parent)
    for key in done & set(cells):
        locks.release(key)
    return set(cells) - done


def fail_abandoned(store: Store, parent: str, locks: CellLocks) -> None:
    """Mark FAILED each RUNNING child of `parent` whose cell lock no process holds: its driver is gone."""
    for run in store.children(parent, "RUNNING"):
        key = run["tags"].get(CONFIG_HASH)
        if key is None or locks.held_elsewhere(key):
            continue
        reason = (f"its driver is gone: the run was RUNNING while no process held its cell lock {locks.path(key)} "
                  "(power loss or a killed driver); marked FAILED by the next `sdakd ablate`, which trains the cell "
                  "again while its grid has it")
        record_reason(store.client, run["run_id"], reason)
        store.client.set_terminated(run["run_id"], "FAILED")
        print(f"{run['tags'].get(MLFLOW_RUN_NAME, run['run_id'])}: {reason}", flush=True)

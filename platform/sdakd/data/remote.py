"""A dataset at a URI (`s3://bucket/path`, `gs://...`, `hdfs://...`, `file://...`: whatever pyarrow.fs opens),
copied once per node into a local cache folder that every rank and later run on that node reads.

The copy lives in `<cache>/<hash of the URI>-<dataset checksum>/`. One process per node copies, under a lock the
others wait on; each file is checked against the manifest's sha256, and a cached file that went missing or
changed is fetched again. A rebuilt dataset (a new checksum) gets a folder of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from sdakd.data.store import MANIFEST, locked, read_manifest, stale_files
from sdakd.errors import SdakdError

log = logging.getLogger("sdakd")


def is_uri(root: object) -> bool:
    return isinstance(root, str) and "://" in root


def default_cache() -> Path:
    """~/.cache/sdakd/datasets (or under $XDG_CACHE_HOME): on each node, beside nothing that is synced."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdakd" / "datasets"


def fetch_dataset(uri: str, cache: Path | None = None) -> Path:
    """The local folder holding a checked copy of the dataset at `uri` (copied now if this node lacks it)."""
    fs, base = _open(uri)
    remote_manifest = _read_bytes(fs, f"{base}/{MANIFEST}", uri)
    try:
        checksum = json.loads(remote_manifest)["checksum"]
    except (ValueError, KeyError, TypeError):
        raise SdakdError(f"{uri}/{MANIFEST} is not a dataset manifest; build one with sdakd data build") from None
    key = hashlib.sha256(uri.encode()).hexdigest()[:12]
    local = (cache or default_cache()) / f"{key}-{str(checksum)[:16]}"
    with locked(local):
        local.mkdir(parents=True, exist_ok=True)
        (local / f"{MANIFEST}.part").write_bytes(remote_manifest)
        os.replace(local / f"{MANIFEST}.part", local / MANIFEST)
        manifest = read_manifest(local)
        stale = stale_files(local, manifest)
        if stale:
            log.info("copying %d of %d dataset files from %s to %s", len(stale), len(manifest["files"]), uri, local)
        for i in stale:
            _download(fs, f"{base}/{manifest['files'][i]['file']}", local / manifest["files"][i]["file"], uri)
        still = stale_files(local, manifest)
        if still:
            raise SdakdError(f"{uri}: after copying, {'; '.join(still.values())}: the remote dataset is damaged")
    return local


def _open(uri: str) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as err:
        raise SdakdError(f"data.root {uri!r} cannot be opened ({err}); allowed: s3://, gs://, hdfs://, file:// "
                         "URIs or a local folder") from None
    return filesystem, path.rstrip("/")


def _read_bytes(fs: Any, path: str, uri: str) -> bytes:
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except OSError as err:  # FileNotFoundError included
        raise SdakdError(f"{uri}: cannot read {MANIFEST} ({err}); is the dataset there?") from None


def _download(fs: Any, path: str, target: Path, uri: str) -> None:
    part = target.with_name(target.name + ".part")
    try:
        with fs.open_input_stream(path) as source, part.open("wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 22)
    except OSError as err:
        part.unlink(missing_ok=True)
        raise SdakdError(f"{uri}: copying {Path(path).name} failed ({err})") from None
    os.replace(part, target)

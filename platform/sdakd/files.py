"""File fingerprints: what runs record about the weights files they read."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(path: Path | str) -> str:
    """`<file name> sha256:<first 12 hex digits>`: enough to tell two weights files apart in a tag."""
    return f"{Path(path).name} sha256:{sha256_of(path)[:12]}"

"""Replacing a whole output folder safely: only a folder of our own files, and only once the new one is complete."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from sdakd.errors import SdakdError


def check_replaceable(out: Path, own_files: re.Pattern[str], manifest: str) -> None:
    """`out` may be replaced whole: it is missing, empty, or a dataset: only `own_files`, with a `manifest` of ours
    among them (never someone's other files, nor a folder that merely holds a file of the manifest's name)."""
    if out.exists() and not out.is_dir():
        raise SdakdError(f"out_dir {out} exists and is not a folder")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    foreign = [name for name in names if not own_files.fullmatch(name)]
    if names and not foreign and not _is_our_manifest(out / manifest):
        foreign = [manifest]
    if foreign:
        raise SdakdError(
            f"out_dir {out} holds files that are not part of a dataset ({', '.join(foreign[:4])}); "
            "name a new or empty folder, or a dataset folder to rebuild"
        )


def _is_our_manifest(path: Path) -> bool:
    """A manifest an sdakd build wrote: JSON whose `format` names an sdakd dataset format."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("format", "")).startswith("sdakd-")


def swap_in(staging: Path, out: Path) -> None:
    """Put the complete dataset in `staging` at `out` by renames; the old one is kept until the new one is there."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old)  # onto the empty folder mkdtemp made
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)

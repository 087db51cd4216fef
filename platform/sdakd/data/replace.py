"""Replacing a whole output folder safely: only a folder of our own files, and only once the new one is complete."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from sdakd.errors import SdakdError


def check_replaceable(out: Path, own_files: re.Pattern[str]) -> None:
    """`out` may be replaced whole: it is missing, empty or holds only `own_files` (never someone's other files)."""
    if out.exists() and not out.is_dir():
        raise SdakdError(f"out_dir {out} exists and is not a folder")
    foreign = sorted(p.name for p in out.iterdir() if not own_files.fullmatch(p.name)) if out.is_dir() else []
    if foreign:
        raise SdakdError(
            f"out_dir {out} holds files that are not part of a dataset ({', '.join(foreign[:4])}); "
            "name a new or empty folder, or a dataset folder to rebuild"
        )


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

"""Checkpoint files: atomic writes, `weights_only=True` reads, one clear error on a bad file."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from sdakd.errors import SdakdError, load_failure

LAST = "last.pt"


def save_checkpoint(state: dict[str, Any], directory: Path, stage_name: str | None = None) -> Path:
    """Write `last.pt` (and `<stage>.pt` at a stage end) without ever leaving a half-written file."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / LAST
    tmp = directory / f".{LAST}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, target)
    if stage_name is not None:
        shutil.copyfile(target, directory / f"{stage_name}.pt")
    return target


@contextlib.contextmanager
def linked_folder(*paths: Path) -> Iterator[Path]:
    """A temporary folder beside `paths[0]` holding hard links to `paths` under their names: a folder for Ray to
    persist as a checkpoint, without copying the files or taking the files beside them."""
    with tempfile.TemporaryDirectory(dir=paths[0].parent, prefix=".linked-") as folder:
        for path in paths:
            os.link(path, Path(folder) / path.name)
        yield Path(folder)


def load_checkpoint(path: Path | str, map_location: Any = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise SdakdError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise SdakdError(f"checkpoint {path} is empty (0 bytes): its write was cut short; resume from another one")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise SdakdError(
            f"checkpoint {path} is not a plain weights file (refused to unpickle code): {load_failure(err)}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise SdakdError(f"checkpoint {path} is unreadable: {load_failure(err)}") from None
    if not isinstance(state, dict) or "nets" not in state:
        raise SdakdError(f"checkpoint {path} is not an sdakd training checkpoint (no 'nets' entry)")
    return state

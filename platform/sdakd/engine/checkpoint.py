"""Checkpoint files: atomic writes, `weights_only=True` reads, one clear error on a bad file."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from sdakd.errors import SdakdError

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


def load_checkpoint(path: Path | str, map_location: Any = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise SdakdError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise SdakdError(f"checkpoint {path} is not a plain weights file (refused to unpickle code): {err}") from None
    except (RuntimeError, EOFError) as err:
        raise SdakdError(f"checkpoint {path} is unreadable: {err}") from None
    if not isinstance(state, dict) or "nets" not in state:
        raise SdakdError(f"checkpoint {path} is not an sdakd training checkpoint (no 'nets' entry)")
    return state

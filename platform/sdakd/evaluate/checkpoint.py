"""`sdakd eval`: score a trained student from its run folder, training checkpoint or exported weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from sdakd.config.load import load_config
from sdakd.config.schema import ExperimentConfig
from sdakd.engine.checkpoint import load_checkpoint
from sdakd.engine.device import resolve_device
from sdakd.errors import SdakdError, load_failure
from sdakd.evaluate.suites import Suites
from sdakd.evaluate.validator import Validator, cost
from sdakd.models.from_config import student_generator
from sdakd.models.weights import check_fits
from sdakd.teacher.cache import prepare_inputs


def run_folder_of(path: Path) -> Path:
    for folder in (path, path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder
    raise SdakdError(f"{path}: no config.yaml found in it or its parents (expected an sdakd run folder)")


def student_state(path: Path) -> dict[str, torch.Tensor]:
    """The shipped student weights: `student.pt`, else the EMA (or raw) G of a training checkpoint."""
    if path.is_dir():
        path = path / "student.pt" if (path / "student.pt").is_file() else path / "checkpoints"
    if path.is_file() and path.name == "student.pt":
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
            raise SdakdError(f"{path} is not a plain weights file (refused to load it): {load_failure(err)}") from None
    state = load_checkpoint(path)
    ema = state.get("ema")
    return {k.removeprefix("module."): v for k, v in ema.items()} if ema else state["nets"]["student_g"]


def trained_student(cfg: ExperimentConfig, path: Path) -> nn.Module:
    """`cfg`'s student holding the weights at `path` (see student_state); a misfit names the keys and shapes."""
    student = student_generator(cfg)
    state = student_state(path)
    check_fits(student, state, path)
    student.load_state_dict(state)
    return student


def evaluate_checkpoint(path: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise SdakdError(f"checkpoint {path} does not exist")
    cfg = load_config(path=run_folder_of(path) / "config.yaml", overrides=overrides)
    device = resolve_device(cfg.run.device)
    student = trained_student(cfg, path).to(device)
    data, teacher = prepare_inputs(cfg, device)
    validator = Validator(cfg, data, teacher, device)
    test = Validator(cfg, data, teacher, device, split="test")
    suites = Suites(cfg, data, device, teacher)
    return {
        "student": validator.student(student),
        "references": validator.references(),
        **({"test": test.report(student)} if test.pairs else {}),
        **({"suites": suites.report(student)} if suites.pairs else {}),
        "cost": cost(student, device, cfg.run.latency_repeats),
    }

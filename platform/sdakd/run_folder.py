"""A run folder: the resolved config and command written before training, and afterwards the EMA student's
weights and metrics.json beside the checkpoints; and which checkpoints may resume into a config."""

from __future__ import annotations

import json
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from sdakd.config.identity import config_hash
from sdakd.config.load import dump_yaml, validate
from sdakd.config.schema import ExperimentConfig
from sdakd.engine.checkpoint import load_checkpoint
from sdakd.errors import SdakdError
from sdakd.evaluate.validator import cost, cost_side
from sdakd.experiment import Experiment, out_dir_for

# Fields that fix the networks' shapes: a checkpoint only resumes under the same values.
ARCHITECTURE_FIELDS = ("method", "teacher", "student", "student_d", "data.scale", "methods")


def write_run_files(exp: Experiment, command: str | None = None) -> None:
    exp.out_dir.mkdir(parents=True, exist_ok=True)
    (exp.out_dir / "config.yaml").write_text(dump_yaml(exp.cfg))
    (exp.out_dir / "command.txt").write_text((command or shlex.join(sys.argv)) + "\n")


def final_metrics(exp: Experiment) -> dict[str, Any]:
    cfg, engine = exp.cfg, exp.engine
    student = engine.eval_generator()
    repeats = cfg.run.latency_repeats
    metrics: dict[str, Any] = {"student": exp.validator.student(student)} | {"references": exp.validator.references()}
    metrics["cost"] = {"student": cost(student, exp.device, repeats)}
    if exp.teacher is not None:
        metrics["cost"]["teacher"] = cost(exp.teacher.g, exp.device, repeats)
        metrics["cost"]["speedup"] = metrics["cost"]["teacher"]["latency_ms"] / metrics["cost"]["student"]["latency_ms"]
    metrics["stages"] = engine.history
    metrics["info"] = {
        "method": cfg.method,
        "config_hash": config_hash(cfg),
        "seed": cfg.seed,
        "device": str(exp.device),
        "teacher": exp.teacher.identity if exp.teacher else None,
        "teacher_source": exp.teacher.source if exp.teacher else None,
        "teacher_d_source": exp.teacher.d_source if exp.teacher else None,
        "perceptual_pretrained": cfg.loss.perceptual.vgg_weights is not None,
        "dataset_checksum": exp.data.checksum,
        "cost_input": f"1x3x{cost_side(student)}x{cost_side(student)} generator input",
        "timings_s": exp.timings,
    }
    return metrics


def save_results(exp: Experiment, **info: Any) -> dict[str, Any]:
    """The final metrics (with `info` added to theirs), written beside the EMA student's weights."""
    metrics = final_metrics(exp)
    metrics["info"] |= info
    torch.save(exp.engine.eval_generator().state_dict(), exp.out_dir / "student.pt")
    (exp.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config as today's loader reads it (renamed options under their new names)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the checkpoint's own spelling is not the user's to fix
        try:
            return validate(saved, "the checkpoint's config").to_dict()
        except SdakdError:
            return saved  # compared as written: fields that no longer validate show up as differences


def check_resumable(cfg: ExperimentConfig, path: Path) -> None:
    saved = load_checkpoint(path).get("meta", {}).get("config")
    if saved is None:
        raise SdakdError(f"checkpoint {path} holds no config: it was not written by `sdakd train`")
    saved, here = _saved_config(saved), cfg.to_dict()
    differ = []
    for field_path in ARCHITECTURE_FIELDS:
        a, b = saved, here
        for key in field_path.split("."):
            a, b = (a or {}).get(key), (b or {}).get(key)
        if a != b:
            differ.append(f"{field_path}: checkpoint {a!r} vs config {b!r}")
    if differ:
        raise SdakdError(
            f"checkpoint {path} was written for other networks (wrong architecture?):\n  " + "\n  ".join(differ)
        )


def resume_path(cfg: ExperimentConfig, resume: Path | str | bool | None) -> Path | None:
    """The checkpoint `resume` names (True: the run folder's last one), checked against `cfg` before anything
    is built; None for a fresh run."""
    if not resume:
        return None
    path = out_dir_for(cfg) / "checkpoints" if resume is True else Path(resume).absolute()
    check_resumable(cfg, path)
    return path

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

from sdakd.config.identity import TRACKING_ONLY, config_hash, identity_dict
from sdakd.config.load import absolute_paths, dump_yaml, validate
from sdakd.config.schema import ExperimentConfig
from sdakd.engine.checkpoint import LAST, load_checkpoint
from sdakd.errors import SdakdError
from sdakd.evaluate.validator import Validator, cost, cost_side
from sdakd.experiment import Experiment, out_dir_for
from sdakd.files import fingerprint

# Fields that fix the networks' shapes: a checkpoint never resumes under other values, not even as a warm start.
ARCHITECTURE_FIELDS = ("method", "teacher", "student", "student_d", "data.scale", "methods")


FAILED_FILE = "failed.json"  # a run that diverged: where, which terms, the last finite losses, the config hash


def write_run_files(exp: Experiment, command: str | None = None) -> None:
    exp.out_dir.mkdir(parents=True, exist_ok=True)
    (exp.out_dir / FAILED_FILE).unlink(missing_ok=True)  # an earlier attempt's failure is not this run's
    (exp.out_dir / "config.yaml").write_text(dump_yaml(exp.cfg))
    (exp.out_dir / "command.txt").write_text((command or shlex.join(sys.argv)) + "\n")


def final_metrics(exp: Experiment) -> dict[str, Any]:
    cfg, engine = exp.cfg, exp.engine
    student = engine.eval_generator()
    repeats = cfg.run.latency_repeats
    metrics: dict[str, Any] = {"student": exp.validator.student(student)} | {"references": exp.validator.references()}
    # The held-out split: only reports read it (no stage end, search or ASHA rung sees it).
    test = Validator(cfg, exp.data, exp.teacher, exp.device, split="test")
    if test.pairs:
        metrics["test"] = test.report(student)
    if exp.suites and exp.suites.pairs:
        metrics["suites"] = exp.suites.report(student)
    metrics["cost"] = {"student": cost(student, exp.device, repeats)}
    if exp.teacher is not None:
        metrics["cost"]["teacher"] = cost(exp.teacher.g, exp.device, repeats)
        metrics["cost"]["speedup"] = metrics["cost"]["teacher"]["latency_ms"] / metrics["cost"]["student"]["latency_ms"]
    metrics["stages"] = engine.history
    # what was not measured, and why; what was measured with which weights
    metrics["unavailable"] = dict(exp.validator.unavailable)
    used = exp.validator.weights | (exp.suites.weights() if exp.suites else {})
    metrics["metric_weights"] = {name: fingerprint(path) for name, path in used.items() if path}
    metrics["metric_files"] = {name: str(path) for name, path in used.items() if path}  # e.g. NIQE's default
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
        "test_images": [pair[0] for pair in test.pairs],
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


def write_failure(exp: Experiment, record: dict[str, Any]) -> Path:
    """failed.json: why the run stopped (a divergence's record), beside its config.yaml and checkpoints."""
    path = exp.out_dir / FAILED_FILE
    path.write_text(json.dumps(record, indent=2))
    return path


def _saved_identity(saved: dict[str, Any]) -> dict[str, Any]:
    """What decided a checkpoint's result, as today's loader reads its config (renamed options under their new
    names, paths made absolute as this config's are)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the checkpoint's own spelling is not the user's to fix
        try:
            return identity_dict(absolute_paths(validate(saved, "the checkpoint's config")))
        except SdakdError:  # compared as written: fields that no longer validate show up as differences
            return {key: value for key, value in saved.items() if key not in TRACKING_ONLY}


def differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, value in a, value in b) for every leaf where two config dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b), key=str):
            found += differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return found
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def _listed(differ: list[tuple[str, Any, Any]]) -> str:
    return "\n  ".join(f"{field}: checkpoint {a!r} vs config {b!r}" for field, a, b in differ)


def check_resumable(cfg: ExperimentConfig, path: Path, warm_start: bool = False) -> dict[str, Any]:
    """Refuse a checkpoint of other networks, and (unless `warm_start`) one trained under other fields that decide
    the result; returns what metrics.json records of a warm start ({} when the configs agree)."""
    meta = load_checkpoint(path).get("meta", {})
    if meta.get("config") is None:
        raise SdakdError(f"checkpoint {path} holds no config: it was not written by `sdakd train`")
    saved, here = _saved_identity(meta["config"]), identity_dict(absolute_paths(cfg))
    differ = differences(saved, here)
    architecture = [d for d in differ if any(d[0] == a or d[0].startswith(f"{a}.") for a in ARCHITECTURE_FIELDS)]
    if architecture:
        raise SdakdError(f"checkpoint {path} was written for other networks (wrong architecture?):\n  "
                         + _listed(architecture))
    if not differ:
        return {}
    if not warm_start:
        raise SdakdError(
            f"checkpoint {path} was trained under another config (config hash {meta.get('config_hash')} there, "
            f"{config_hash(cfg)} here); these fields decide the result and differ:\n  {_listed(differ)}\n"
            "resume under the checkpoint's config, or pass --warm-start to start this config from its weights"
        )
    return {
        "warm_start_from": str(path / LAST if path.is_dir() else path),
        "warm_start_config_hash": meta.get("config_hash"),
        "warm_start_changed": [field for field, _, _ in differ],
    }


def resume_point(
    cfg: ExperimentConfig, resume: Path | str | bool | None, warm_start: bool = False
) -> tuple[Path | None, dict[str, Any]]:
    """The checkpoint `resume` names (True: the run folder's last one), checked against `cfg` before anything
    is built, and the warm-start record for metrics.json; (None, {}) for a fresh run."""
    if not resume:
        if warm_start:
            raise SdakdError("--warm-start needs --resume CHECKPOINT: the checkpoint to start from")
        return None, {}
    path = out_dir_for(cfg) / "checkpoints" if resume is True else Path(resume).absolute()
    return path, check_resumable(cfg, path, warm_start)


"""What decides a run's result, and its hash: the resolved config minus where-and-how-often fields and the
sections of methods that are not running. Grids skip finished cells, and caches find their entries, by it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from sdakd.config.schema import ExperimentConfig
from sdakd.methods import METHODS

# Fields that name where things are written, how often we log and what we measure: they never change what is learned.
TRACKING_ONLY = ("run", "eval")


def method_options(cfg: ExperimentConfig) -> BaseModel:
    """The active method's validated knobs (its defaults where the config names none)."""
    return METHODS.get(cfg.method).options_of(cfg)


def identity_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    data = cfg.to_dict()
    for key in TRACKING_ONLY:
        data.pop(key)
    data["methods"] = {cfg.method: method_options(cfg).model_dump(mode="json")}
    if cfg.data.degradation == "bicubic":  # bicubic always degrades in the loader: the field changes nothing there
        data["data"].pop("degrade_on")
    return data


def stable_hash(data: Any, length: int = 12) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def config_hash(cfg: ExperimentConfig) -> str:
    return stable_hash(identity_dict(cfg))

"""Stage-prefix cache: a finished stage's checkpoint, keyed by exactly the fields that stage's result depends on.

The key of stage k is `stable_hash` of the config's identity minus what cannot have changed stages 1..k:
  (a) the iterations of later stages;
  (b) `loss.<section>` for loss terms no stage <= k uses (term `gan` and `gan_kd` use `loss.gan`; D terms use
      only `loss.gan.type`, never its weight);
  (c) `student_d.*` while no D trains or feeds the generator in stages <= k;
plus the teacher's identity and the dataset checksum, which decide results but are not config fields.
A trial whose stage-k key has a cached file loads it instead of training stages 1..k: its method is built fresh
(its own seeded init), then the engine restores only the nets the prefix changed, their Adam state, the EMA and
the history, at the start of stage k+1, so the rest runs as if it had trained the prefix.
No Ray here: the Tune trial and the tests call these functions directly.
"""

from __future__ import annotations

import copy
import os
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from sdakd.config.identity import identity_dict, stable_hash
from sdakd.config.schema import ExperimentConfig
from sdakd.engine import Engine, Stage, unwrap
from sdakd.engine.checkpoint import load_checkpoint
from sdakd.errors import SdakdError


def _uses(section: str, terms: set[str]) -> bool:
    return any(term == section or term.startswith(section + "_") for term in terms)


def stage_key(cfg: ExperimentConfig, method: Any, k: int, context: Mapping[str, Any]) -> str:
    """The cache key of the state after stages 0..k of `method` (0-based)."""
    stages: list[Stage] = method.stages()
    done = stages[: k + 1]
    g_terms = {t for s in done for t in s.g_loss}
    d_terms = {t for s in done for t in s.d_loss}
    ident = copy.deepcopy(identity_dict(cfg))
    for later in stages[k + 1 :]:
        ident["stages"].pop(later.name, None)  # (a)
    # A randomly initialised VGG is drawn from the RNG after every net is built, so then every net-shaping field
    # reaches the perceptual loss of stages <= k: keep (b) and (c) whole.
    vgg_drawn_after_nets = "perceptual" in g_terms and cfg.loss.perceptual.vgg_weights is None
    if not vgg_drawn_after_nets:
        loss = ident["loss"]
        kept = {name: fields for name, fields in loss.items() if _uses(name, g_terms)}  # (b)
        if d_terms and "gan" not in kept:
            kept["gan"] = {"type": loss["gan"]["type"]}
        ident["loss"] = kept
        if not d_terms and not _uses("gan", g_terms):
            ident.pop("student_d")  # (c)
    return stable_hash({"config": ident, "stage": stages[k].name, **context})


def stage_keys(cfg: ExperimentConfig, method: Any, context: Mapping[str, Any]) -> list[str]:
    return [stage_key(cfg, method, k, context) for k in range(len(method.stages()))]


class PrefixCache:
    """`<cache_dir>/prefix/<key>.pt`: an engine checkpoint plus the names of the nets the prefix changed."""

    def __init__(self, cache_dir: Path) -> None:
        self.root = Path(cache_dir).resolve() / "prefix"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load_longest(self, keys: Sequence[str], engine: Engine) -> int:
        """Start `engine` after the longest cached prefix; returns how many stages it covers (0: none cached).
        Stages without iterations write no checkpoint, so they are never a prefix's last stage."""
        for k in reversed(range(len(keys))):
            if engine.stages[k].iters and self.path(keys[k]).is_file():
                self.load(keys[k], engine, k)
                return k + 1
        return 0

    def store(self, key: str, state: dict[str, Any], changed: Sequence[str]) -> None:
        """Atomic: a concurrent trial with the same prefix may write the same key; both writes are equal."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{uuid.uuid4().hex}.tmp"
        torch.save({**state, "changed_nets": sorted(changed)}, tmp)
        os.replace(tmp, self.path(key))

    def load(self, key: str, engine: Engine, k: int) -> None:
        """Start `engine` at stage k+1 from the cached state after stage k."""
        path = self.path(key)
        state = load_checkpoint(path, map_location="cpu")
        try:
            engine.restore_partial(state, set(state["changed_nets"]), k + 1)
        except (KeyError, RuntimeError, ValueError) as err:
            raise SdakdError(f"prefix cache {path} does not fit this trial's networks: {err}") from None


def snapshot(nets: nn.ModuleDict) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().clone() for k, v in unwrap(net).state_dict().items()} for name, net in nets.items()}


def changed_nets(nets: nn.ModuleDict, initial: Mapping[str, Mapping[str, torch.Tensor]]) -> list[str]:
    """Nets whose weights or buffers moved since `initial`: trained ones, and also untrained ones whose running
    statistics or spectral-norm vectors a forward pass in train mode updated (Adam state alone misses those)."""
    return [
        name
        for name, net in nets.items()
        if any(not torch.equal(v, initial[name][k]) for k, v in unwrap(net).state_dict().items())
    ]

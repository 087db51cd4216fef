"""A stage as data: its length, and which loss terms with which weights drive the G and the D."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


def _nonzero(terms: Mapping[str, float]) -> Mapping[str, float]:
    # A zero weight means "term off": it is not even computed (ablations like loss.fm.weight=0).
    return MappingProxyType({name: float(w) for name, w in terms.items() if w})


@dataclass(frozen=True)
class Stage:
    name: str
    iters: int
    g_loss: Mapping[str, float] = field(default_factory=dict)
    d_loss: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "g_loss", _nonzero(self.g_loss))
        object.__setattr__(self, "d_loss", _nonzero(self.d_loss))

    @property
    def trains_g(self) -> bool:
        return bool(self.g_loss)

    @property
    def trains_d(self) -> bool:
        return bool(self.d_loss)


def stage_offsets(stages: list[Stage]) -> list[int]:
    """Global step at which each stage starts."""
    offsets, total = [], 0
    for stage in stages:
        offsets.append(total)
        total += stage.iters
    return offsets

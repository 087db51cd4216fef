"""Loss bookkeeping for the stage loop: each step's loss terms stay on the training device, and are read in one
transfer at log and checkpoint steps. Reading a term per step would stall the host on the GPU once per term, so
the host could never queue the next step while the GPU runs this one.

A read checks every step it covers, so a divergence is still pinned to the step where it happened, even though
the run learns of it (and stops) only at the read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from sdakd.engine.stage import Stage
from sdakd.errors import SdakdError


class Diverged(SdakdError, FloatingPointError):
    """A run whose losses went non-finite, or whose D loss passed its bound: a failure of the run, which the same
    config repeats, not a crash. `record` is what failed.json holds; `file` is that file, once written."""

    exit_code = 1  # the CLI's code for a run that failed (2: input refused before any compute)

    def __init__(self, record: dict[str, Any], file: Path | None = None) -> None:
        super().__init__(record["reason"] + (f" (details: {file})" if file else ""))
        self.record, self.file = record, file

    def __reduce__(self) -> tuple[Any, ...]:  # Ray and Tune pickle it across processes
        return type(self), (self.record, self.file)


@dataclass(frozen=True)
class StepLosses:
    """One step's losses, read back: its global step (counted from 1, as the logs count) and the terms that failed
    (non-finite, or a D term above the bound)."""

    global_step: int
    values: dict[str, float]
    bad: dict[str, float]


def d_keys(stage: Stage) -> frozenset[str]:
    """The logged names of a stage's D terms (`Engine._descend` names them so)."""
    return frozenset({f"loss/d_{name}" for name in stage.d_loss} | ({"loss/d_total"} if stage.trains_d else set()))


class LossBook:
    """Steps' losses kept on the device until `read`; `mean` averages what was read since the last log."""

    def __init__(self, max_d_loss: float | None) -> None:
        self.max_d_loss = max_d_loss  # a D term above it fails its step; None: no bound
        self.pending: list[tuple[int, tuple[str, ...], frozenset[str], torch.Tensor]] = []
        self.read_since_log: list[dict[str, float]] = []

    def add(self, global_step: int, losses: Mapping[str, torch.Tensor], stage: Stage) -> None:
        """Queue one step's detached terms; `.float()` is exact for bf16 terms and a no-op for fp32 ones."""
        values = torch.stack([value.float() for value in losses.values()]) if losses else torch.zeros(0)
        self.pending.append((global_step, tuple(losses), d_keys(stage), values))

    def read(self) -> list[StepLosses]:
        """Every queued step, in order, in one device-to-host transfer."""
        if not self.pending:
            return []
        flat = torch.cat([values for *_, values in self.pending]).tolist()
        steps, start = [], 0
        for global_step, names, d_names, _ in self.pending:
            values = dict(zip(names, flat[start : start + len(names)]))
            start += len(names)
            steps.append(StepLosses(global_step, values, self._failed(values, d_names)))
        self.pending.clear()
        return steps

    def accept(self, steps: list[StepLosses]) -> None:
        self.read_since_log += [step.values for step in steps]

    def mean(self) -> dict[str, float]:
        """Per-term mean over the steps read since the last call (summed in step order, as they were taken)."""
        sums: dict[str, float] = {}
        for values in self.read_since_log:
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
        count = len(self.read_since_log)
        self.read_since_log = []
        return {key: value / count for key, value in sums.items()}

    def _failed(self, values: dict[str, float], d_names: frozenset[str]) -> dict[str, float]:
        bound = self.max_d_loss
        return {k: v for k, v in values.items()
                if not math.isfinite(v) or (k in d_names and bound is not None and abs(v) > bound)}


def divergence(stage: Stage, step: StepLosses, in_stage: int, read_at: int, bound: float | None,
               last_finite: tuple[int, dict[str, float]], config_hash: str | None) -> Diverged:
    """The error for `step` of `stage`, found by the read at global step `read_at` (where the run stops); `step.bad`
    is empty when the step failed on another worker only."""
    terms = {k: f"{v:.4g}" for k, v in step.bad.items()}  # as text: JSON has no nan
    over = f" (above run.max_d_loss={bound:g})" if any(math.isfinite(v) for v in step.bad.values()) else ""
    stopped = "" if read_at == step.global_step else (
        f"; losses are read at log and checkpoint steps, so the run stopped at global step {read_at}")
    reason = (f"stage {stage.name} diverged at global step {step.global_step} (step {in_stage} of {stage.iters}): "
              f"{', '.join(f'{k}={v}' for k, v in terms.items()) or 'a loss on another worker'}{over}{stopped}; "
              "the same config diverges again: lower optim.lr_g or optim.lr_d, or change the loss weights")
    last_step, last = last_finite
    return Diverged({"reason": reason, "stage": stage.name, "global_step": step.global_step, "step_in_stage": in_stage,
                     "terms": terms, "max_d_loss": bound, "last_finite_step": last_step or None,
                     "last_finite_losses": last, "stopped_at_step": read_at, "config_hash": config_hash})

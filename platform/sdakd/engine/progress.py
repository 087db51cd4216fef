"""Console progress for a stage loop: one line per log interval and per stage end."""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping

from sdakd.engine.loop import Callbacks
from sdakd.engine.stage import Stage


class ConsoleProgress(Callbacks):
    """Per-stage progress lines on stdout: stage, step, losses, speed."""

    def __init__(self, prefix: str = "", stream: Any = None) -> None:
        self.prefix = prefix
        self.stream = stream or sys.stdout
        self.tick = time.perf_counter()
        self.last_step = 0

    def on_log(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None:
        now = time.perf_counter()
        rate = (global_step - self.last_step) / max(now - self.tick, 1e-9)
        self.tick, self.last_step = now, global_step
        losses = " ".join(f"{k.removeprefix('loss/')}={v:.4f}" for k, v in sorted(metrics.items()))
        print(f"{self.prefix}[{stage.name}] step {global_step} | {rate:.1f} it/s | {losses}", file=self.stream, flush=True)

    def on_stage_end(self, stage: Stage, global_step: int, metrics: Mapping[str, float]) -> None:
        scores = " ".join(f"{k}={v:.3f}" for k, v in metrics.items())
        print(f"{self.prefix}[{stage.name}] done at step {global_step} | {scores}", file=self.stream, flush=True)

"""The engine's batch source: `source(step)` -> that step's training batch, still a pure function of (seed, step).

Batches come from the training process (data.num_workers 0) or from loader processes into pinned memory (> 0);
with the second-order degradation on the device (data.degrade_on: device), the loader serves clean HR crops and
their draws and the training device degrades them.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset

from sdakd.data.degrade_device import degrade_on_device
from sdakd.data.loader import STEPS, CleanCrops, StepBatches, batch_loader


class StepSource:
    """`StepSource(batches, device, num_workers, degrade_on)(step)`: the batch the engine trains on at `step`."""

    def __init__(self, batches: StepBatches, device: torch.device, num_workers: int, degrade_on: str) -> None:
        self.device, self.num_workers = device, num_workers
        self.on_device = degrade_on == "device" and batches.second_order  # bicubic stays in the loader
        self.scale = batches.scale
        self.dataset: Dataset = CleanCrops(batches) if self.on_device else batches
        self._served: Iterator[Any] = iter(())
        self._next_step = -1  # the step the loader processes will serve next

    def __call__(self, step: int) -> dict[str, Tensor]:
        batch = self.dataset[step] if self.num_workers == 0 else self._from_workers(step)
        return degrade_on_device(batch, self.scale, self.device) if self.on_device else batch

    def _from_workers(self, step: int) -> Any:
        # the engine asks for consecutive steps; any other step (a resume, a benchmark) restarts the loader there
        if step != self._next_step:
            self._served = iter(batch_loader(self.dataset, step, STEPS - step, self.num_workers,
                                             pin_memory=self.device.type == "cuda"))
        self._next_step = step + 1
        return next(self._served)


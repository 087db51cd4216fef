"""What a network costs: parameters, multiply-accumulates at a fixed input, measured latency."""

from __future__ import annotations

import copy
import statistics
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass: FLOPs / 2 as counted by torch's FlopCounterMode."""
    x = torch.zeros(tuple(input_shape), device=_device(model), dtype=_dtype(model))
    with _eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def latency_ms(
    model: nn.Module,
    input_shape: Sequence[int],
    warmup: int = 3,
    repeats: int = 10,
    device: str | torch.device | None = None,
) -> float:
    """Median wall time of one forward pass in ms, after `warmup` untimed passes; on `device` (default: the
    model's). A model on another device is copied there, so the caller's model is left where it is."""
    target = torch.device(device) if device is not None else _device(model)
    net = model if _device(model) == target else copy.deepcopy(model).to(target)
    x = torch.rand(tuple(input_shape), device=target, dtype=_dtype(net))
    times = []
    with _eval_mode(net), torch.inference_mode():
        for i in range(warmup + repeats):
            _sync(target)
            start = time.perf_counter()
            net(x)
            _sync(target)  # CUDA kernels run asynchronously: wait before reading the clock
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _dtype(model: nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None else torch.float32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

"""channels_last for the nets of a GPU run, as far as their tensors allow it."""

from __future__ import annotations

import itertools

import torch
from torch import nn


def to_channels_last(net: nn.Module) -> nn.Module:
    """`net` with its 4-D parameters and buffers (conv weights, fixed filters) in channels_last, in place; the other
    tensors stay as they are. `net.to(memory_format=torch.channels_last)` refuses a net holding any tensor of more
    than 4 dimensions: GCFSR's modulated conv weights are 5-D (they become per-sample kernels at run time)."""
    for tensor in itertools.chain(net.parameters(), net.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return net

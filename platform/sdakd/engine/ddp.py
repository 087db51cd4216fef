"""DDP over a method's trainable nets, keeping the checkpoint keys of an unwrapped run."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sdakd.errors import SdakdError


class Members(nn.ModuleList):
    """A list of nets that a method calls one by one (SDAKD's adapters, DCD's connectors).

    A call to a member never passes through a wrapper around the list, so DDP would not see it: each member gets
    its own wrapper instead. `.module` is the plain list, so `Engine.unwrap` saves and loads the keys of an
    unwrapped run, and local and Ray checkpoints stay interchangeable.
    """

    def __init__(self, plain: nn.ModuleList, wrap: Callable[[nn.Module], nn.Module]) -> None:
        super().__init__(wrap(member) for member in plain)
        object.__setattr__(self, "module", plain)  # unregistered: iterating must yield only the wrapped members


def wrap_trainable(method: Any, device: torch.device) -> None:
    """Replace each trainable entry of `method.nets` by its DDP form; the frozen teacher is not in `nets`."""
    device_ids = [device.index] if device.type == "cuda" else None

    def wrap(net: nn.Module) -> nn.Module:
        if not any(p.requires_grad for p in net.parameters()):
            return net  # fixed nets (DCD's teacher connectors) have no grads to average
        if isinstance(net, nn.ModuleList):
            return Members(net, wrap)
        if type(net).forward is nn.Module.forward:
            raise SdakdError(f"{type(net).__name__} has no forward: DDP cannot sync the nets a method calls in it")
        # No find_unused_parameters (an extra graph walk per step): a net runs whole or not at all (adapters in
        # stage 1), and a D frozen for the G step expects no grads. Tested in tests/test_distributed.py.
        # No buffer broadcast before every forward: the buffers here are spectral norm's power-iteration vectors,
        # which follow from the weights DDP already keeps equal, and the running statistics of DCD's connectors,
        # which GroupBatchNorm2d computes from the whole group's batch; syncing them would add a collective to each
        # of the D's several calls per step for nothing.
        return DistributedDataParallel(net, device_ids=device_ids, forward_sync_buffers=False)

    for name, net in list(method.nets.items()):
        method.nets[name] = wrap(net)

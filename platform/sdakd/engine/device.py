"""Which device a run trains on."""

from __future__ import annotations

import torch

from sdakd.errors import SdakdError, shown


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; any other name as torch spells it (cuda:1, cpu)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:  # torch's own message is a C++ stack
        raise SdakdError(f"device {shown(name)} is not a device torch knows: use auto, cpu, cuda or cuda:N") from None

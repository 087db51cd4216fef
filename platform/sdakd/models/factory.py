"""Network registries and width-scaled builders.

A registered class declares `width_params`: the integer channel arguments that `width` multiplies.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from sdakd.errors import SdakdError
from sdakd.models.rrdbnet import RRDBNet
from sdakd.models.srvgg import SRVGGNetCompact
from sdakd.models.unet_disc import UNetDiscriminatorSN
from sdakd.registry import Registry

GENERATORS: Registry[type[nn.Module]] = Registry("generator")
DISCRIMINATORS: Registry[type[nn.Module]] = Registry("discriminator")

GENERATORS.register("rrdbnet")(RRDBNet)
GENERATORS.register("srvgg_compact")(SRVGGNetCompact)
DISCRIMINATORS.register("unet_sn")(UNetDiscriminatorSN)


def build(registry: Registry[type[nn.Module]], arch: str, width: float, params: dict[str, Any]) -> nn.Module:
    cls = registry.get(arch)
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise SdakdError(f"{registry.kind} {arch!r} takes no {', '.join(unknown)}; it takes: {', '.join(accepted)}")
    if width <= 0:
        raise SdakdError(f"width must be > 0, got {width}")
    scaled = dict(params)
    for name in cls.width_params:
        scaled[name] = max(1, round(params.get(name, accepted[name].default) * width))
    return cls(**scaled)


def build_generator(arch: str, width: float = 1.0, **params: Any) -> nn.Module:
    """A registered generator with its channel arguments (given or default) times `width`."""
    return build(GENERATORS, arch, width, params)


def generator_from_spec(
    arch: str, *, scale: int, depth: int, width: float = 1.0, **params: Any
) -> nn.Module:
    """A generator from the config's family-neutral fields: `depth` is RRDB blocks or compact convs."""
    names = GENERATORS.get(arch).spec_names
    return build_generator(arch, width=width, **{names["scale"]: scale, names["depth"]: depth}, **params)


def build_discriminator(arch: str, width: float = 1.0, **params: Any) -> nn.Module:
    """A registered discriminator with its channel arguments (given or default) times `width`."""
    return build(DISCRIMINATORS, arch, width, params)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

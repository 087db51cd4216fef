"""Network registries and width-scaled builders.

A registered class declares `width_params`: the channel arguments that `width` multiplies (rounded to whole
channels), or a float width factor such as GCFSR's `narrow` (multiplied as is).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from sdakd.errors import SdakdError
from sdakd.models.gcfsr import GCFSR
from sdakd.models.rrdbnet import RRDBNet
from sdakd.models.srvgg import SRVGGNetCompact
from sdakd.models.stylegan2 import StyleGAN2Discriminator
from sdakd.models.unet_disc import UNetDiscriminatorSN
from sdakd.registry import Registry

GENERATORS: Registry[type[nn.Module]] = Registry("generator")
DISCRIMINATORS: Registry[type[nn.Module]] = Registry("discriminator")

GENERATORS.register("rrdbnet")(RRDBNet)
GENERATORS.register("srvgg_compact")(SRVGGNetCompact)
GENERATORS.register("gcfsr")(GCFSR)
DISCRIMINATORS.register("unet_sn")(UNetDiscriminatorSN)
DISCRIMINATORS.register("stylegan2")(StyleGAN2Discriminator)


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
        value = params.get(name, accepted[name].default) * width
        scaled[name] = value if isinstance(accepted[name].default, float) else max(1, round(value))
    return cls(**scaled)


def build_generator(arch: str, width: float = 1.0, **params: Any) -> nn.Module:
    """A registered generator with its channel arguments (given or default) times `width`."""
    return build(GENERATORS, arch, width, params)


def spec_params(cls: type[nn.Module], spec: dict[str, Any]) -> dict[str, Any]:
    """The config's family-neutral fields under the argument names `cls.spec_names` gives them; a family takes only
    the fields it names (GCFSR: the output size, but no scale or depth)."""
    names = getattr(cls, "spec_names", {})
    return {names[key]: value for key, value in spec.items() if key in names}


def generator_from_spec(
    arch: str, *, scale: int, depth: int | None, size: int | None = None, width: float = 1.0, **params: Any
) -> nn.Module:
    """A generator from the config's family-neutral fields: `scale` its input's upscaling, `depth` RRDB blocks or
    compact convs (None where the depth follows the size), `size` the output side (fixed-size families)."""
    cls = GENERATORS.get(arch)
    if (depth is None) == ("depth" in cls.spec_names):
        needs = "needs a depth" if depth is None else "has no depth of its own (it follows out_size): use null"
        raise SdakdError(f"generator {arch!r} {needs} (num_block)")
    spec = spec_params(cls, {"scale": scale, "depth": depth, "size": size})
    return build_generator(arch, width=width, **spec, **params)


def build_discriminator(arch: str, width: float = 1.0, **params: Any) -> nn.Module:
    """A registered discriminator with its channel arguments (given or default) times `width`."""
    return build(DISCRIMINATORS, arch, width, params)


def discriminator_from_spec(arch: str, *, size: int, width: float = 1.0, **params: Any) -> nn.Module:
    """A discriminator for images of side `size` (used by fixed-size families such as StyleGAN2's)."""
    spec = spec_params(DISCRIMINATORS.get(arch), {"size": size})
    return build_discriminator(arch, width=width, **spec, **params)


def generate(g: nn.Module, lr: Tensor, cond: Tensor | None = None) -> Tensor:
    """`g`'s output for `lr`; per-sample conditioning (GCFSR's upscaling factors) goes only to a model given one."""
    return g(lr) if cond is None else g(lr, cond)


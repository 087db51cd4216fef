"""Feature taps by module path, taken with forward hooks so no network's forward needs editing."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from sdakd.errors import SdakdError


class Tappable(Protocol):
    def depth_taps(self) -> list[str]: ...

    def tap_points(self, every: int = 1) -> list[str]: ...


def pick_every(names: list[str], every: int) -> list[str]:
    """names[every-1], names[2*every-1], ...; the deepest one always included."""
    if every < 1:
        raise SdakdError(f"tap spacing 'every' must be >= 1, got {every}")
    picked = names[every - 1 :: every]
    if names and (not picked or picked[-1] != names[-1]):
        picked.append(names[-1])
    return picked


def find_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        hints = difflib.get_close_matches(name, modules, n=5) or [n for n in modules if n][:8]
        raise SdakdError(f"{type(model).__name__} has no module {name!r}; valid names include: {', '.join(hints)}")
    return modules[name]


class FeatureTaps:
    """Records the outputs of the named submodules into `.features`, refreshed on every forward of `model`.

    Use as a context manager, or call `remove()` when done.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.features: dict[str, torch.Tensor] = {}
        targets = {name: find_module(model, name) for name in names}
        # clearing on the model's forward keeps a tap from showing an earlier batch's output
        self._handles: list[RemovableHandle] = [model.register_forward_pre_hook(self._clear)]
        self._handles += [module.register_forward_hook(self._recorder(name)) for name, module in targets.items()]

    def _clear(self, module: nn.Module, args: Any) -> None:
        self.features.clear()

    def _recorder(self, name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def record(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            self.features[name] = output

        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def drop_forward_hooks(model: nn.Module) -> None:
    """Remove every forward (pre-)hook from `model` and its submodules: a deep copy of a tapped net (the EMA) keeps
    the original's hooks, whose recorders would then overwrite the original's tapped features."""
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_hooks_with_kwargs, module._forward_hooks_always_called,
                      module._forward_pre_hooks, module._forward_pre_hooks_with_kwargs):
            hooks.clear()


def pair_taps(teacher: Tappable, student: Tappable, every: int = 1) -> list[tuple[str, str]]:
    """(teacher tap, student tap) for each of the student's `tap_points(every)`.

    A depth tap goes to the teacher's depth tap at the same relative depth (student block j of S matches
    teacher block round((j+1)*T/S) - 1, so last meets last); any other tap (conv_body) to the same name.
    """
    t_depth, s_depth = teacher.depth_taps(), student.depth_taps()
    t_others = set(teacher.tap_points()) - set(t_depth)
    pairs = []
    for name in student.tap_points(every):
        if name in s_depth:
            j, s, t = s_depth.index(name), len(s_depth), len(t_depth)
            pairs.append((t_depth[(2 * (j + 1) * t + s) // (2 * s) - 1], name))
        elif name in t_others:
            pairs.append((name, name))
        else:
            raise SdakdError(f"student tap {name!r} has no partner in {type(teacher).__name__}")
    return pairs


@contextmanager
def _probe_mode(model: nn.Module) -> Iterator[None]:
    # eval + no_grad so a probe forward moves no spectral-norm vectors; each module's own mode comes back
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training


def feature_channels(model: nn.Module, name: str, probe_size: int = 16) -> int:
    """Channels of a tap's output: the module's `out_channels`, else measured by one small forward."""
    channels = getattr(find_module(model, name), "out_channels", None)
    if isinstance(channels, int):
        return channels
    ref = next(model.parameters())
    probe = torch.zeros(1, getattr(model, "num_in_ch", 3), probe_size, probe_size, device=ref.device, dtype=ref.dtype)
    with FeatureTaps(model, [name]) as taps, _probe_mode(model):
        model(probe)
    return taps.features[name].shape[1]

"""Load and save weights in the official Real-ESRGAN/BasicSR (and GCFSR) checkpoint format."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping, TypeVar

import torch
from torch import nn

from sdakd.errors import SdakdError, load_failure

M = TypeVar("M", bound=nn.Module)
SHOWN = 4  # offending keys named in an error
SN_KEYS = {  # parametrization suffix -> legacy torch.nn.utils.spectral_norm suffix
    "parametrizations.weight.original": "weight_orig",
    "parametrizations.weight.0._u": "weight_u",
    "parametrizations.weight.0._v": "weight_v",
}


def legacy_names(keys: list[str]) -> dict[str, str]:
    """Our spectral-norm parametrization keys -> the legacy keys that official checkpoints use."""
    names = {}
    for key in keys:
        for new, old in SN_KEYS.items():
            if key.endswith(new):
                names[key] = key.removesuffix(new) + old
    return names


def few(items: list[str]) -> str:
    more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def read_state(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint: under `key`, else `params_ema`, else `params`, else the whole file."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SdakdError(f"{path}: no such weights file") from None
    except pickle.UnpicklingError:
        raise SdakdError(
            f"{path}: not a plain weights file; refusing to unpickle code it may hold "
            "(torch.load(weights_only=True) rejected it). Re-save only its state dict where you trust it."
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise SdakdError(f"{path}: unreadable weights file ({load_failure(err)})") from None
    top = list(ckpt) if isinstance(ckpt, dict) else []
    if key is not None:
        if key not in top:
            raise SdakdError(f"{path}: no entry {key!r}; top-level keys: {few(top)}")
        state = ckpt[key]
    else:
        state = next((ckpt[k] for k in ("params_ema", "params") if k in top), ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SdakdError(f"{path}: holds no state dict of tensors; top-level keys: {few(top)}")
    # weights saved from a DDP-wrapped model carry a 'module.' prefix
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def check_fits(
    model: nn.Module, state: object, source: object, strict: bool = True, names: Mapping[str, str] | None = None
) -> None:
    """Raise one SdakdError naming the first missing, unexpected and reshaped keys where `state` does not fit
    `model` (torch's own error holds them on lines the CLI does not show). `names`: how to spell keys in it."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SdakdError(f"{source}: holds no state dict of tensors")
    expected = model.state_dict()
    names = names or {}

    def shown(keys: list[str]) -> str:
        return few([names.get(k, k) for k in keys])

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    problems = []
    if strict and missing:
        problems.append(f"missing {shown(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected {shown(unexpected)}")
    if reshaped:
        shapes = [
            f"{names.get(k, k)} expected {tuple(expected[k].shape)} found {tuple(state[k].shape)}" for k in reshaped
        ]
        problems.append(f"shape mismatch: {few(shapes)}")
    if problems:
        raise SdakdError(
            f"{source} does not fit {type(model).__name__}: {'; '.join(problems)}. "
            "Checkpoint of the wrong architecture or width?"
        )


def load_weights(model: M, path: str | Path, key: str | None = None, strict: bool = True) -> M:
    """Load an official (or our own) checkpoint into `model`; a mismatch raises SdakdError naming keys and shapes."""
    to_legacy = legacy_names(list(model.state_dict()))  # name keys as the official format spells them
    from_legacy = {old: new for new, old in to_legacy.items()}
    unused = getattr(model, "checkpoint_unused", ())  # key prefixes an official checkpoint holds but the model drops
    state = {from_legacy.get(k, k): v for k, v in read_state(path, key).items() if not k.startswith(unused)}
    check_fits(model, state, path, strict, to_legacy)
    model.load_state_dict(state, strict=strict)
    return model


def save_official(model: nn.Module, path: str | Path, key: str = "params_ema") -> None:
    """Write `{key: state_dict}` with legacy spectral-norm keys, as Real-ESRGAN's own checkpoints are."""
    state = model.state_dict()
    names = legacy_names(list(state))
    torch.save({key: {names.get(k, k): v.detach().cpu() for k, v in state.items()}}, path)

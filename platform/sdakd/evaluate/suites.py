"""Named evaluation suites (`eval.suites`): image sets beside the dataset's splits, each with the LR it is scored on.

A suite's images come from a dataset's split, a folder of HR images or two folders of LR/HR files paired by name;
its LR from bicubic, from the training's second-order degradation (each image's draws seeded by the suite's seed
and the image's name, so every run and every method sees the same LR) or, for paired files, from the LR folder.
Every suite is read, checked and degraded when a run is built, before any training; scored with every available
metric of the registry at the run's end (and at every stage end where `stage_ends` asks).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from sdakd.config.eval_schema import SuiteConfig
from sdakd.config.schema import ExperimentConfig
from sdakd.data import DEGRADATIONS, read_split
from sdakd.data.build import image_files
from sdakd.data.dataset import Dataset, ensure_dataset
from sdakd.errors import SdakdError
from sdakd.evaluate.validator import Validator
from sdakd.teacher.frozen import Teacher

Pair = tuple[str, Tensor, Tensor]  # (image name, LR, HR), floats in [0, 1], (3, h, w) and (3, h*scale, w*scale)


def image_seed(seed: int, name: str) -> int:
    """The generator seed of one image's second-order draws: a function of the suite's seed and the image's name
    alone, so that neither the other images nor the order they are read in changes an image's LR."""
    digest = hashlib.blake2b(f"suite:{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def lr_digest(pairs: list[Pair]) -> str:
    """sha256 over the suite's LR tensors (names, shapes and float32 values, in order): equal digests, same LR."""
    digest = hashlib.sha256()
    for name, lr, _ in pairs:
        digest.update(f"{name}:{tuple(lr.shape)}".encode())
        digest.update(lr.to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def suite_pairs(name: str, suite: SuiteConfig, data_root: Path | None, scale: int) -> list[Pair]:
    """The suite's (image name, LR, HR), sorted by name, bounded by max_side and max_images."""
    field = f"eval.suites.{name}"
    if suite.lr is not None:
        lr_images, hr_images = _folder(suite.lr, f"{field}.lr"), _folder(suite.hr, f"{field}.hr")
        only_lr, only_hr = sorted(set(lr_images) - set(hr_images)), sorted(set(hr_images) - set(lr_images))
        if only_lr or only_hr:
            raise SdakdError(f"{field}: LR and HR files must pair by name; without a partner: "
                             f"in {suite.lr}: {', '.join(only_lr) or '-'}; in {suite.hr}: {', '.join(only_hr) or '-'}")
        names = sorted(lr_images)[: suite.max_images]
        return [_paired(field, image, lr_images[image], hr_images[image], scale, suite.max_side) for image in names]
    if suite.split is not None:
        images = dict(read_split(suite.dataset or data_root, suite.split))
        if not images:
            raise SdakdError(f"{field}: split {suite.split!r} of {suite.dataset or data_root} holds no images")
    else:
        images = {image: _read(path) for image, path in _folder(suite.images, f"{field}.images").items()}
    degrade = DEGRADATIONS.get(suite.lr_degradation)
    pairs = []
    for image in sorted(images)[: suite.max_images]:
        hr = _crop(images[image], suite.max_side, scale).float() / 255
        if min(hr.shape[-2:]) < scale:
            raise SdakdError(f"{field}: image {image} is smaller than data.scale={scale}")
        generator = torch.Generator().manual_seed(image_seed(suite.seed, image))
        pairs.append((image, degrade(hr, scale, generator), hr))
    return pairs


def _folder(folder: Path, field: str) -> dict[str, Path]:
    """The image files of a folder by name (the file name without its suffix)."""
    try:
        return {path.stem: path for path in image_files(folder)}
    except SdakdError as err:  # (its message names the folder as images_dir, as `data build` calls it)
        raise SdakdError(f"{field}: {err}") from None


def _read(path: Path) -> Tensor:
    """uint8 RGB (3, H, W)."""
    try:
        with Image.open(path) as img:
            array = np.array(ImageOps.exif_transpose(img).convert("RGB"))  # as `data build` stores photos
    except (OSError, SyntaxError, ValueError) as err:  # PIL's truncated, corrupt or oversized files
        raise SdakdError(f"{path} is not a readable image ({err})") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _crop(img: Tensor, max_side: int | None, scale: int) -> Tensor:
    """Centre-cropped to max_side, then to a multiple of `scale` (as validation images are)."""
    h, w = img.shape[1:]
    if max_side is not None:
        top, left = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
        img = img[:, top : top + max_side, left : left + max_side]
        h, w = img.shape[1:]
    return img[:, : h - h % scale, : w - w % scale]


def _paired(field: str, image: str, lr_path: Path, hr_path: Path, scale: int, max_side: int | None) -> Pair:
    lr, hr = _read(lr_path), _read(hr_path)
    if tuple(hr.shape[1:]) != (lr.shape[1] * scale, lr.shape[2] * scale):
        raise SdakdError(f"{field}: {hr_path.name} is {hr.shape[2]}x{hr.shape[1]}, not data.scale={scale} times "
                         f"{lr_path.name} ({lr.shape[2]}x{lr.shape[1]})")
    if max_side is not None:  # the LR centre-cropped to max_side / scale, and the HR under it
        side = max(1, max_side // scale)
        top, left = max(0, (lr.shape[1] - side) // 2), max(0, (lr.shape[2] - side) // 2)
        lr = lr[:, top : top + side, left : left + side]
        hr = hr[:, top * scale : (top + side) * scale, left * scale : (left + side) * scale]
    return image, lr.float() / 255, hr.float() / 255


def check_suites(cfgs: Iterable[ExperimentConfig]) -> None:
    """Read every distinct suite of `cfgs` once (a grid's cells share theirs): a bad one fails here, before any
    study or cell trains, rather than in every trial."""
    seen = set()
    for cfg in cfgs:
        for name, suite in cfg.eval.suites.items():
            key = (suite, cfg.data.root, cfg.data.scale, cfg.run.cache_dir)
            if key not in seen:
                seen.add(key)
                # (the run's dataset is built only for a suite that reads it)
                root = ensure_dataset(cfg).root if suite.split and suite.dataset is None else None
                suite_pairs(name, suite, root, cfg.data.scale)


class Suites:
    """A run's evaluation suites: read and degraded when built (errors before any training), each scored by a
    Validator of its own, built (the teacher's outputs included) on first use. `teacher` may be set after the
    suites are read, before they are scored."""

    def __init__(self, cfg: ExperimentConfig, data: Dataset, device: torch.device, teacher: Teacher | None = None):
        self.cfg, self.teacher, self.device = cfg, teacher, device
        self.pairs = {name: suite_pairs(name, suite, data.root, cfg.data.scale)
                      for name, suite in cfg.eval.suites.items()}
        self._validators: dict[str, Validator] = {}

    def validator(self, name: str) -> Validator:
        if name not in self._validators:
            self._validators[name] = Validator(self.cfg, None, self.teacher, self.device, pairs=self.pairs[name])
        return self._validators[name]

    def report(self, g: nn.Module) -> dict[str, dict]:
        """metrics.json's `suites`: per suite the student's and the references' scores, the student's per image,
        what its LR is, and which metrics it could not compute."""
        found = {}
        for name, suite in self.cfg.eval.suites.items():
            validator = self.validator(name)
            found[name] = validator.report(g) | {
                "degradation": suite.lr_degradation,
                "images": [pair[0] for pair in self.pairs[name]],
                "lr_sha256": lr_digest(self.pairs[name]),
                "unavailable": dict(validator.unavailable),
            }
        return found

    def weights(self) -> dict[str, Path]:
        """The metric files the suites scored with (a suite's images may allow NIQE where validation's do not)."""
        return {name: path for v in self._validators.values() for name, path in v.weights.items()}

    def stage_scores(self, g: nn.Module) -> dict[str, float]:
        """The student's scores on the suites that ask for them at stage ends, as `suite.<name>.<metric>`."""
        return {f"suite.{name}.{metric}": value
                for name, suite in self.cfg.eval.suites.items() if suite.stage_ends
                for metric, value in self.validator(name).student(g).items()}

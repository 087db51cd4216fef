"""Step-indexed training batches and full-image validation pairs.

A training batch is a pure function of (seed, step): resuming at step k, or splitting one batch over several
ranks, sees exactly the pixels an uninterrupted single-process run would.
"""

from __future__ import annotations

import ctypes
import hashlib
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sdakd.data.degrade import DEGRADATIONS, bicubic_down, bicubic_up, degrade_per_sample
from sdakd.data.draws import SecondOrderDraws, SecondOrderParams, draw_second_order
from sdakd.data.store import SplitImages, read_split
from sdakd.errors import SdakdError

STEPS = 2**31 - 1  # "infinite": the engine decides how many steps it takes


def step_seed(seed: int, step: int) -> int:
    """A 63-bit generator seed for one step; hashed so that neighbouring steps give unrelated streams."""
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class StepBatches(Dataset):
    """`batches[step]` -> {"lr": (B, 3, gt/scale, gt/scale), "hr": (B, 3, gt, gt)}, float in [0, 1].

    Each step draws a global batch of batch_size * world_size samples (image, crop corner, flip, degradation
    seed) from a generator seeded by (seed, step), then the second-order degradation's batch-wide choices; rank r
    degrades and returns samples [r*B, (r+1)*B). `clean(step)` returns them undegraded with their draws instead,
    for the training device to degrade (`degrade_device`).

    With `scales` (GCFSR): each sample's factor is drawn from `scales`, its LR upsampled back to gt_size, and the
    batch holds "cond": (B,) float factors.
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str = "train",
        batch_size: int = 12,
        gt_size: int = 256,
        scale: int = 4,
        degradation: str = "bicubic",
        scales: Sequence[int] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        flip: bool = True,
    ) -> None:
        for field, value in (("batch_size", batch_size), ("gt_size", gt_size), ("scale", scale),
                             ("world_size", world_size)):
            if not isinstance(value, int) or value < 1:
                raise SdakdError(f"{field}={value!r} is invalid; allowed: an integer >= 1")
        if gt_size % scale:
            raise SdakdError(f"gt_size={gt_size} is not a multiple of scale={scale}")
        if scales is not None and (not scales or any(f < 1 or gt_size % f for f in scales)):
            raise SdakdError(f"scales={scales!r} is invalid; allowed: factors >= 1 that divide gt_size={gt_size}")
        if not 0 <= rank < world_size:
            raise SdakdError(f"rank={rank} is outside 0..{world_size - 1} (world_size={world_size})")
        DEGRADATIONS.get(degradation)  # refuses an unknown name, listing the known ones
        self.second_order, self.params = degradation == "second_order", SecondOrderParams()
        self.images = SplitImages(data_dir, split)  # memory-mapped: crops are read, never the whole split
        if not len(self.images):
            raise SdakdError(f"{data_dir}: split {split!r} holds no images")
        small = [
            f"{name} ({w}x{h})"
            for name, h, w in zip(self.images.names, self.images.heights, self.images.widths)
            if min(h, w) < gt_size
        ]
        if small:
            raise SdakdError(
                f"{data_dir}: {split} images smaller than gt_size={gt_size}: {', '.join(small[:10])}; "
                "lower gt_size or rebuild the dataset with larger images"
            )
        self.batch_size, self.gt_size, self.scale = batch_size, gt_size, scale
        self.seed, self.rank, self.world_size, self.flip = seed, rank, world_size, flip
        self.scales = tuple(scales) if scales else None

    def __len__(self) -> int:
        return STEPS

    def __getitem__(self, step: int) -> dict[str, Tensor]:
        """The loader path: {"lr", "hr"[, "cond"]}, degraded here, per sample."""
        with _one_thread():
            hr, factors, draws = self._crops(step)
            lrs = []
            for i, factor in enumerate(factors.tolist()):
                if draws is None:
                    lr = bicubic_down(hr[i], factor)
                else:
                    lr = degrade_per_sample(hr[i : i + 1], factor, draws.select(slice(i, i + 1)))[0]
                lrs.append(lr if self.scales is None else bicubic_up(lr, factor))
        return {"lr": torch.stack(lrs), "hr": hr} | self._cond(factors)

    def clean(self, step: int) -> dict[str, Any]:
        """The device path: {"hr", "draws"[, "cond"]}, the clean crops and the second-order draws that
        `degrade_device.degrade_on_device` applies to them."""
        with _one_thread():
            hr, factors, draws = self._crops(step)
        return {"hr": hr, "draws": draws} | self._cond(factors)

    def _cond(self, factors: Tensor) -> dict[str, Tensor]:
        return {} if self.scales is None else {"cond": factors.float()}

    def _crops(self, step: int) -> tuple[Tensor, Tensor, SecondOrderDraws | None]:
        """This rank's HR crops (B, 3, gt, gt), their factors (B,) and their second-order draws (None: bicubic)."""
        keep_freed_memory()
        g = torch.Generator().manual_seed(step_seed(self.seed, step))
        total = self.batch_size * self.world_size
        # draw for the whole global batch so every rank consumes the same stream
        picks = torch.randint(len(self.images), (total,), generator=g)
        corners = torch.rand(total, 2, generator=g, dtype=torch.float64)
        flips = torch.rand(total, generator=g) < 0.5
        sample_seeds = torch.randint(2**62, (total,), generator=g)
        # drawn last, so that the single-scale stream stays what it was
        factors = torch.full((total,), self.scale)
        if self.scales:
            factors = torch.tensor(self.scales)[torch.randint(len(self.scales), (total,), generator=g)]
        rows = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        # one seed per sample: its draws do not depend on which rank or batch size produced it
        draws = draw_second_order(g, sample_seeds[rows].tolist(), self.params) if self.second_order else None
        hrs = []
        for i in range(rows.start, rows.stop):
            k = int(picks[i])
            top = int(corners[i, 0] * (int(self.images.heights[k]) - self.gt_size + 1))
            left = int(corners[i, 1] * (int(self.images.widths[k]) - self.gt_size + 1))
            hr = self.images.crop(k, top, left, self.gt_size).float() / 255
            hrs.append(hr.flip(-1) if self.flip and flips[i] else hr)
        return torch.stack(hrs), factors[rows], draws


class CleanCrops(Dataset):
    """`StepBatches.clean` as a dataset, for loader processes to serve to the device path."""

    def __init__(self, batches: StepBatches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return STEPS

    def __getitem__(self, step: int) -> dict[str, Any]:
        return self.batches.clean(step)


@cache
def keep_freed_memory() -> None:
    """Keep the blocks of freed tensors for the next step instead of handing them back to the OS (glibc).

    By default glibc returns large freed blocks and the next step's tensors fault their pages in again. The previous
    store escaped that by accident: decoding every image into the rank's memory raised glibc's adaptive thresholds.
    Set explicitly, per process (loader processes too): second-order patches/s on one core measured 1.2-1.9x higher
    at GT 256 (benchmarks/RESULTS.md, the data store). What is kept is a step's working set, not the dataset."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its allocator has its own policy
        return
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks under 32 MiB (glibc's maximum) come from the heap
    libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: the heap's free top is returned only beyond 256 MiB


@contextmanager
def _one_thread() -> Iterator[None]:
    """Per-sample ops are small: intra-op threads only add sync cost, and on a busy CPU they stall (measured 10x
    slower with 2 threads on 2 loaded cores). A no-op inside DataLoader workers, which already run one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def batch_loader(
    batches: Dataset,
    start_step: int,
    num_steps: int,
    num_workers: int = 0,
    prefetch_factor: int = 2,
    pin_memory: bool | None = None,
) -> DataLoader:
    """Batches for steps start_step .. start_step + num_steps - 1, in order, prepared by `num_workers` processes
    (`batches[step]`: StepBatches, or CleanCrops for the device path); pinned by default when CUDA is present."""
    workers = num_workers > 0
    return DataLoader(
        batches,
        batch_size=None,  # StepBatches already returns whole batches
        sampler=range(start_step, start_step + num_steps),
        num_workers=num_workers,
        persistent_workers=workers,
        prefetch_factor=prefetch_factor if workers else None,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        # the workers' seeds (unused: a batch draws from its step's seed) come from here, not from the global RNG
        generator=torch.Generator().manual_seed(0),
    )


def val_pairs(
    data_dir: str | Path, scale: int, max_side: int | None = None, split: str = "val"
) -> list[tuple[str, Tensor, Tensor]]:
    """(name, lr, hr) per image of `split` (val or test): HR optionally centre-cropped to max_side, then cropped to a multiple
    of scale; LR = bicubic_down(HR). Deterministic."""
    if max_side is not None and max_side < scale:
        raise SdakdError(f"max_side={max_side} is smaller than scale={scale}; allowed: None or >= scale")
    pairs = []
    for name, img in read_split(data_dir, split):
        h, w = img.shape[1:]
        if max_side is not None:
            top, left = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
            img = img[:, top : top + max_side, left : left + max_side]
            h, w = img.shape[1:]
        hr = img[:, : h - h % scale, : w - w % scale].float() / 255
        pairs.append((name, bicubic_down(hr, scale), hr))
    return pairs


def factor_val_pairs(
    data_dir: str | Path, scales: Sequence[int], size: int, split: str = "val"
) -> list[tuple[str, Tensor, Tensor, Tensor]]:
    """GCFSR validation: (name, lr, hr, factor) for every image of `split`, centre-cropped to size x size, at every
    distinct factor; LR = bicubic down by the factor and back up to `size`. Deterministic."""
    pairs = []
    for name, img in read_split(data_dir, split):
        h, w = img.shape[1:]
        if min(h, w) < size:
            raise SdakdError(f"{data_dir}: {split} image {name} ({w}x{h}) is smaller than {size}x{size}")
        top, left = (h - size) // 2, (w - size) // 2
        hr = img[:, top : top + size, left : left + size].float() / 255
        for factor in sorted(set(scales)):
            lr = bicubic_up(bicubic_down(hr, factor), factor)
            pairs.append((f"{name}_x{factor}", lr, hr, torch.tensor([float(factor)])))
    return pairs

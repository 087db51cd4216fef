"""The random parameters of Real-ESRGAN's second-order degradation, drawn in one place for both of its appliers.

`draw_second_order` is where all of the degradation's randomness is decided (the noise fields excepted: it draws
their seeds). The loader applier (per sample, on CPU) and the device applier (batched, on the training device) only
apply what it drew, so one (seed, step) gives one set of parameters wherever the degradation runs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Sequence, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")

KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass(frozen=True, kw_only=True)
class DegradeStage:
    """One blur -> resize -> noise -> JPEG round of the second-order model."""

    blur_prob: float
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # over KERNELS
    blur_sigma: tuple[float, float]
    sinc_prob: float = 0.1
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_prob: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float]  # Gaussian sigma on the 0..255 scale
    poisson_scale_range: tuple[float, float]
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)


@dataclass(frozen=True, kw_only=True)
class SecondOrderParams:
    """Real-ESRGAN's train_realesrgan_x4plus.yml degradation options."""

    first: DegradeStage = field(
        default_factory=lambda: DegradeStage(
            blur_prob=1.0,
            blur_sigma=(0.2, 3.0),
            resize_prob=(0.2, 0.7, 0.1),
            resize_range=(0.15, 1.5),
            noise_range=(1.0, 30.0),
            poisson_scale_range=(0.05, 3.0),
        )
    )
    second: DegradeStage = field(
        default_factory=lambda: DegradeStage(
            blur_prob=0.8,
            blur_sigma=(0.2, 1.5),
            resize_prob=(0.3, 0.4, 0.3),
            resize_range=(0.3, 1.2),
            noise_range=(1.0, 25.0),
            poisson_scale_range=(0.05, 2.5),
        )
    )
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    final_sinc_prob: float = 0.8
    final_kernel_size: int = 21

    @property
    def padded_kernel_size(self) -> int:
        """Every kernel of a batch is stored centred in a square of this side, so that one convolution takes all."""
        return max(*self.kernel_sizes, self.final_kernel_size)


@dataclass(frozen=True)
class Kernels:
    """(N, K, K) float32 filters, each centred in K x K with zeros around it; `sizes` (N,) their true sides
    (1: a unit impulse, i.e. no filtering)."""

    weights: Tensor
    sizes: Tensor


@dataclass(frozen=True)
class RoundDraws:
    """One blur -> resize -> noise round for N samples. The resize is shared by the batch (as Real-ESRGAN resizes a
    whole batch at once), so that every later stage runs on one tensor."""

    blur: Kernels
    resize_factor: float  # of the round's base size
    resize_mode: str
    gaussian: Tensor  # (N,) bool: Gaussian noise, else Poisson
    gray: Tensor  # (N,) bool: one noise field shared by the three channels
    strength: Tensor  # (N,) float64: Gaussian sigma on the 0..1 scale, or the Poisson noise's scale
    noise_seeds: Tensor  # (N,) int64: each sample's noise field comes from a generator of its own


@dataclass(frozen=True)
class SecondOrderDraws:
    first: RoundDraws
    second: RoundDraws
    sinc: Kernels  # the final sinc filter (an impulse where a sample has none)
    quality: Tensor  # (N, 2) int64 JPEG qualities: after the first round, and the final one
    sinc_then_jpeg: bool  # final order: resize + sinc, then JPEG; or JPEG, then resize + sinc
    final_mode: str

    def __len__(self) -> int:
        return len(self.quality)

    def select(self, index: Tensor | slice) -> SecondOrderDraws:
        """The draws of the samples at `index` (a CPU index), batch-wide choices unchanged."""
        def pick(r: RoundDraws) -> RoundDraws:
            return replace(r, blur=_pick_kernels(r.blur, index), gaussian=r.gaussian[index], gray=r.gray[index],
                           strength=r.strength[index], noise_seeds=r.noise_seeds[index])

        return replace(self, first=pick(self.first), second=pick(self.second),
                       sinc=_pick_kernels(self.sinc, index), quality=self.quality[index])

    def to(self, device: torch.device) -> SecondOrderDraws:
        """The filters on `device`; every other draw stays on the host, where it decides shapes and seeds."""
        def move(k: Kernels) -> Kernels:
            return Kernels(k.weights.to(device, non_blocking=True), k.sizes)

        return replace(self, first=replace(self.first, blur=move(self.first.blur)),
                       second=replace(self.second, blur=move(self.second.blur)), sinc=move(self.sinc))


def _pick_kernels(k: Kernels, index: Tensor | slice) -> Kernels:
    return Kernels(k.weights[index], k.sizes[index])


def draw_second_order(g: torch.Generator, sample_seeds: Sequence[int], p: SecondOrderParams) -> SecondOrderDraws:
    """The batch-wide choices from `g` (the step's generator), then each sample's from a generator seeded by its
    entry of `sample_seeds`, so that a sample's draws do not depend on the rank or the batch that holds it."""
    sizes = [(_choice(g, ("up", "down", "keep"), s.resize_prob), s) for s in (p.first, p.second)]
    factors = [(_resize_factor(g, kind, s), _choice(g, RESIZE_MODES)) for kind, s in sizes]
    sinc_then_jpeg, final_mode = _chance(g, 0.5), _choice(g, RESIZE_MODES)
    per_sample = [_draw_sample(torch.Generator().manual_seed(int(seed)), p) for seed in sample_seeds]
    rounds = [
        RoundDraws(
            _stack_kernels([s[r]["kernel"] for s in per_sample], p.padded_kernel_size),
            factors[r][0],
            factors[r][1],
            gaussian=torch.tensor([s[r]["gaussian"] for s in per_sample], dtype=torch.bool),
            gray=torch.tensor([s[r]["gray"] for s in per_sample], dtype=torch.bool),
            strength=torch.tensor([s[r]["strength"] for s in per_sample], dtype=torch.float64),
            noise_seeds=torch.tensor([s[r]["seed"] for s in per_sample], dtype=torch.int64),
        )
        for r in (0, 1)
    ]
    return SecondOrderDraws(
        *rounds,
        sinc=_stack_kernels([s[2]["kernel"] for s in per_sample], p.padded_kernel_size),
        quality=torch.tensor([[s[0]["quality"], s[1]["quality"]] for s in per_sample], dtype=torch.int64),
        sinc_then_jpeg=sinc_then_jpeg,
        final_mode=final_mode,
    )


def _draw_sample(g: torch.Generator, p: SecondOrderParams) -> list[dict]:
    """One sample's draws, in a fixed order: each round's blur, noise and JPEG quality (the second round's quality
    is the final JPEG's), then the final sinc filter."""
    rounds = []
    for stage in (p.first, p.second):
        kernel = _random_kernel(g, stage, _choice(g, p.kernel_sizes)) if _chance(g, stage.blur_prob) else None
        gray, gaussian = _chance(g, stage.gray_noise_prob), _chance(g, stage.gaussian_noise_prob)
        strength = _uniform(g, *stage.noise_range) / 255 if gaussian else _uniform(g, *stage.poisson_scale_range)
        seed = int(torch.randint(2**62, (), generator=g))
        quality = round(_uniform(g, *stage.jpeg_range))
        rounds.append(dict(kernel=kernel, gray=gray, gaussian=gaussian, strength=strength, seed=seed, quality=quality))
    sinc = None
    if _chance(g, p.final_sinc_prob):
        sinc = _sinc_kernel(_uniform(g, math.pi / 3, math.pi), p.final_kernel_size)
    return [*rounds, {"kernel": sinc}]


def _stack_kernels(kernels: list[Tensor | None], side: int) -> Kernels:
    weights = torch.zeros(len(kernels), side, side)
    sizes = []
    for i, kernel in enumerate(kernels):
        kernel = torch.ones(1, 1, dtype=torch.float64) if kernel is None else kernel
        k = kernel.shape[-1]
        start = (side - k) // 2
        weights[i, start : start + k, start : start + k] = kernel.float()
        sizes.append(k)
    return Kernels(weights, torch.tensor(sizes))


def _resize_factor(g: torch.Generator, kind: str, stage: DegradeStage) -> float:
    if kind == "up":
        return _uniform(g, 1.0, stage.resize_range[1])
    if kind == "down":
        return _uniform(g, stage.resize_range[0], 1.0)
    return 1.0


# ---------------------------------------------------------------- random draws


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g, dtype=torch.float64).item()


def _chance(g: torch.Generator, p: float) -> bool:
    return torch.rand((), generator=g, dtype=torch.float64).item() < p


def _choice(g: torch.Generator, options: Sequence[T], probs: Sequence[float] | None = None) -> T:
    weights = probs if probs is not None else [1.0] * len(options)
    # inverse CDF on one uniform draw: far cheaper than torch.multinomial for a handful of options
    u = _uniform(g, 0.0, sum(weights))
    for option, cumulative in zip(options, itertools.accumulate(weights)):
        if u < cumulative:
            return option
    return options[-1]


# ---------------------------------------------------------------- blur kernels (BasicSR's degradations.py)


def _grid(size: int) -> Tensor:
    """(size, size, 2) pixel offsets from the kernel centre."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def _mahalanobis(size: int, sigma_x: float, sigma_y: float, theta: float) -> Tensor:
    """x^T C^-1 x over the grid, for the covariance C with principal sigmas rotated by theta."""
    c, s = math.cos(theta), math.sin(theta)
    # C^-1 = R diag(1/sx^2, 1/sy^2) R^T, written out for the 2x2 case
    a = c * c / sigma_x**2 + s * s / sigma_y**2
    b = c * s * (1 / sigma_x**2 - 1 / sigma_y**2)
    d = s * s / sigma_x**2 + c * c / sigma_y**2
    xy = _grid(size)
    x, y = xy[..., 0], xy[..., 1]
    return a * x * x + 2 * b * x * y + d * y * y


def _random_kernel(g: torch.Generator, stage: DegradeStage, size: int) -> Tensor:
    if _chance(g, stage.sinc_prob):
        # small kernels cannot express very low cutoffs without heavy truncation
        low = math.pi / 3 if size < 13 else math.pi / 5
        return _sinc_kernel(_uniform(g, low, math.pi), size)
    kind = _choice(g, KERNELS, stage.kernel_prob)
    sigma_x = _uniform(g, *stage.blur_sigma)
    if kind.endswith("aniso"):
        sigma_y, theta = _uniform(g, *stage.blur_sigma), _uniform(g, -math.pi, math.pi)
    else:
        sigma_y, theta = sigma_x, 0.0
    q = _mahalanobis(size, sigma_x, sigma_y, theta)
    if kind.startswith("generalized"):
        kernel = torch.exp(-0.5 * q ** _beta(g, stage.betag_range))
    elif kind.startswith("plateau"):
        kernel = 1 / (q ** _beta(g, stage.betap_range) + 1)
    else:
        kernel = torch.exp(-0.5 * q)
    return kernel / kernel.sum()


def _beta(g: torch.Generator, beta_range: tuple[float, float]) -> float:
    # half the draws below 1 (heavier tails), half above (flatter top), as BasicSR does
    return _uniform(g, beta_range[0], 1.0) if _chance(g, 0.5) else _uniform(g, 1.0, beta_range[1])


def _sinc_kernel(cutoff: float, size: int) -> Tensor:
    """2-D circular low-pass (jinc) kernel: ringing and overshoot artifacts."""
    r = _grid(size).norm(dim=-1)
    kernel = cutoff * torch.special.bessel_j1(cutoff * r) / (2 * math.pi * r)
    kernel = torch.where(r == 0, torch.full_like(r, cutoff**2 / (4 * math.pi)), kernel)
    return kernel / kernel.sum()

"""NIQE (Mittal, Soundararajan and Bovik, "Making a 'Completely Blind' Image Quality Analyzer", 2013): how far the
natural-scene statistics of an image's 96x96 blocks lie from those of pristine photographs, as a distance between
two multivariate Gaussians of 36 features; lower is more natural. It needs no reference image.

The pristine Gaussian comes from a local file the user names (`eval.niqe.params`): an .npz with `mu_pris_param`
(36), `cov_pris_param` (36x36) and `gaussian_window` (the 7x7 window of the local normalisation), as BasicSR ships
the MATLAB release's parameters (niqe_pris_params.npz); unnamed, the installed basicsr's file is used if any. Scores follow BasicSR's calculate_niqe, which its authors
checked against the MATLAB release: the Y channel of the 8-bit image, rounded, `crop_border` pixels dropped,
blocks at full and half size (MATLAB's antialiased bicubic imresize), in float64 as MATLAB computes.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sdakd.evaluate.metrics import quantize, rgb_to_y

BLOCK = 96  # the block side the pristine parameters were fitted with (the MATLAB release's default)
FEATURES = 36  # 18 per scale
PARAM_KEYS = ("mu_pris_param", "cov_pris_param", "gaussian_window")
SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical and both diagonal neighbours
# The shape parameters the AGGD fit chooses from (MATLAB's 0.2:0.001:10), and each one's moment ratio
# r(a) = G(2/a)^2 / (G(1/a) G(3/a)), by which the fit picks it.
SHAPES = 0.2 + 0.001 * torch.arange(9801, dtype=torch.float64)
SHAPE_RATIOS = torch.exp(2 * torch.lgamma(2 / SHAPES) - torch.lgamma(1 / SHAPES) - torch.lgamma(3 / SHAPES))


class Pristine(NamedTuple):
    mean: Tensor  # (36,)
    cov: Tensor  # (36, 36)
    window: Tensor  # (k, k), sums to 1


BASICSR_PARAMS = Path("metrics", "niqe_pris_params.npz")  # where basicsr ships the MATLAB release's model


def niqe_params(configured: Path | None) -> Path | None:
    """The pristine model NIQE scores with: `eval.niqe.params` when set, else the file the installed basicsr
    ships (found without importing basicsr, whose import pulls in much of torchvision), else None."""
    if configured is not None:
        return configured
    try:
        spec = importlib.util.find_spec("basicsr")
    except (ImportError, ValueError):  # a broken installation is no installation
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / BASICSR_PARAMS).is_file():
            return Path(folder) / BASICSR_PARAMS
    return None


def niqe_unavailable(params_path: str | Path | None) -> str | None:
    """Why NIQE cannot be computed with `params_path`, or None when it can."""
    return _pristine(None if params_path is None else str(params_path))[1]


def niqe_unfit(sizes: list[tuple[int, int]], crop_border: int) -> str | None:
    """Why NIQE cannot score images of these (height, width), or None when it can: each needs at least two whole
    blocks once `crop_border` is dropped (a covariance of one block's features is undefined)."""
    for height, width in sizes:
        if (height - 2 * crop_border) // BLOCK * ((width - 2 * crop_border) // BLOCK) < 2:
            return (f"an image is {height}x{width} px; after the {crop_border}-px border NIQE needs at least two "
                    f"{BLOCK}x{BLOCK} blocks (raise data.val_max_side, or a suite's max_side)")
    return None


def niqe_y(img: Tensor, params_path: str | Path, crop_border: int) -> float:
    """NIQE of one [0, 1] RGB image (3, H, W) or (1, 3, H, W) on its Y channel, BasicSR's convention; NaN when
    fewer than two blocks have any texture (where BasicSR's code raises an error)."""
    pristine, reason = _pristine(str(params_path))
    if pristine is None:
        raise ValueError(reason)
    if img.dim() == 4:
        if img.shape[0] != 1:
            raise ValueError(f"niqe_y scores one image, got a batch of {img.shape[0]}")
        img = img[0]
    y = rgb_to_y(quantize(img.detach().to(torch.float64).cpu()))[0]
    if crop_border > 0:
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    return niqe(y.round(), pristine)


def niqe(gray: Tensor, pristine: Pristine) -> float:
    """NIQE of a (H, W) image on the 0..255 scale: the two-scale block features' Gaussian against the pristine one."""
    rows, cols = gray.shape[0] // BLOCK, gray.shape[1] // BLOCK
    if rows * cols < 2:
        raise ValueError(f"NIQE needs at least two {BLOCK}x{BLOCK} blocks, got a {tuple(gray.shape)} image")
    full = gray[: rows * BLOCK, : cols * BLOCK].to(torch.float64)
    features = []
    for img, side in ((full, BLOCK), (imresize(full, 0.5), BLOCK // 2)):
        blocks = _normalized(img, pristine.window.to(img)).reshape(rows, side, cols, side).transpose(1, 2)
        features.append(_block_features(blocks.reshape(rows * cols, side, side)))
    features = torch.cat(features, dim=1)  # (blocks, 36): a block's features at both scales
    mean = features.nanmean(dim=0)
    complete = features[~features.isnan().any(dim=1)]
    if len(complete) < 2:  # the textured blocks' features have no covariance
        return math.nan
    cov = torch.cov(complete.T)
    diff = (pristine.mean - mean)[None]
    return float(torch.sqrt(diff @ torch.linalg.pinv((pristine.cov + cov) / 2) @ diff.T))


def _normalized(img: Tensor, window: Tensor) -> Tensor:
    """Mean-subtracted, contrast-normalised coefficients (the paper's Eq. 1), the local moments taken with
    `window` over a replicated border (MATLAB's imfilter(..., 'replicate'), a correlation)."""
    pad = window.shape[-1] // 2

    def local_mean(x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x[None, None], (pad, pad, pad, pad), mode="replicate"), window[None, None])[0, 0]

    mu = local_mean(img)
    sigma = torch.sqrt((local_mean(img * img) - mu * mu).abs())
    return (img - mu) / (sigma + 1)


def _block_features(blocks: Tensor) -> Tensor:
    """The 18 features of each (side, side) block: the AGGD fit of its coefficients (shape, mean scale) and of
    the products with each neighbour (shape, mean, left and right scales)."""
    flat = blocks.flatten(1)
    shape, left, right = _aggd(flat)
    features = [shape, (left + right) / 2]
    for shift in SHIFTS:
        products = (blocks * torch.roll(blocks, shift, dims=(1, 2))).flatten(1)
        shape, left, right = _aggd(products)
        mean = (right - left) * torch.exp(torch.lgamma(2 / shape) - torch.lgamma(1 / shape))
        features += [shape, mean, left, right]
    return torch.stack(features, dim=1)


def _aggd(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Moment-matching fit of an asymmetric generalised Gaussian to each row of `x`: (shape, left, right scale).

    A row without negative (or positive) values has no fit: its scales are NaN and, as MATLAB's min over NaNs
    gives, its shape is the first candidate."""
    negative, positive = (x < 0).to(x.dtype), (x > 0).to(x.dtype)
    left_std = torch.sqrt((x * x * negative).sum(1) / negative.sum(1))
    right_std = torch.sqrt((x * x * positive).sum(1) / positive.sum(1))
    gamma = left_std / right_std
    ratio = x.abs().mean(1) ** 2 / (x * x).mean(1)
    ratio = ratio * (gamma**3 + 1) * (gamma + 1) / (gamma**2 + 1) ** 2
    misfit = (SHAPE_RATIOS.to(x)[None] - ratio[:, None]) ** 2
    shape = SHAPES.to(x)[misfit.nan_to_num(nan=math.inf).argmin(dim=1)]
    scale = torch.exp((torch.lgamma(1 / shape) - torch.lgamma(3 / shape)) / 2)
    return shape, left_std * scale, right_std * scale


def imresize(img: Tensor, scale: float) -> Tensor:
    """MATLAB's imresize(img, scale) with its defaults (bicubic, antialiased when shrinking) on (..., H, W):
    out = ceil(H * scale) x ceil(W * scale), neither clamped nor rounded."""
    height, width = img.shape[-2:]
    rows = _resize_matrix(height, scale).to(img)
    cols = _resize_matrix(width, scale).to(img)
    return rows @ img @ cols.T


def _resize_matrix(length: int, scale: float) -> Tensor:
    """(out, in) weights of MATLAB's 1-D bicubic resize: each output pixel's input taps, as a matrix, with the
    taps beyond an edge mirrored back into the image (MATLAB's symmetric padding)."""
    out = math.ceil(length * scale)
    shrink = scale < 1
    support = 4 / scale if shrink else 4.0  # the cubic's 4 taps, stretched to antialias
    centres = torch.arange(1, out + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)  # 1-based input coords
    first = torch.floor(centres - support / 2)
    taps = first[:, None] + torch.arange(math.ceil(support) + 2, dtype=torch.float64)[None]
    distance = centres[:, None] - taps
    weights = scale * _cubic(scale * distance) if shrink else _cubic(distance)
    weights = weights / weights.sum(dim=1, keepdim=True)
    folded = (taps.long() - 1) % (2 * length)  # 0-based, over the image followed by its mirror image
    index = torch.where(folded < length, folded, 2 * length - 1 - folded)
    return torch.zeros(out, length, dtype=torch.float64).scatter_add_(1, index, weights)


def _cubic(x: Tensor) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = x.abs()
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


@functools.lru_cache(maxsize=2)
def _pristine(params_path: str | None) -> tuple[Pristine | None, str | None]:
    """The pristine model of a local .npz, or None and why not (missing, unreadable, or misshapen arrays)."""
    if params_path is None:
        return None, (f"no NIQE parameters given, and no installed basicsr ships {BASICSR_PARAMS.name} (needs an "
                      f".npz with {', '.join(PARAM_KEYS)})")
    path = Path(params_path)
    if not path.is_file():
        return None, f"NIQE parameters {path} not found"
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: np.asarray(archive[key], dtype=np.float64) for key in PARAM_KEYS if key in archive}
    except Exception as err:  # noqa: BLE001 - any unreadable file means the same thing: no NIQE
        return None, f"{path} is not a readable .npz ({' '.join(str(err).split())[:200]})"
    missing = [key for key in PARAM_KEYS if key not in arrays]
    if missing:
        return None, f"{path} lacks {', '.join(missing)}; expected the arrays {', '.join(PARAM_KEYS)}"
    mean, cov, window = arrays["mu_pris_param"].reshape(-1), arrays["cov_pris_param"], arrays["gaussian_window"]
    if mean.shape != (FEATURES,) or cov.shape != (FEATURES, FEATURES):
        return None, (f"{path}: mu_pris_param has {mean.size} values and cov_pris_param is "
                      f"{'x'.join(map(str, cov.shape))}; NIQE needs {FEATURES} and {FEATURES}x{FEATURES}")
    if window.ndim != 2 or window.shape[0] != window.shape[1] or window.shape[0] % 2 == 0:
        return None, f"{path}: gaussian_window is {'x'.join(map(str, window.shape))}; needs an odd square"
    if not all(np.isfinite(a).all() for a in arrays.values()):
        return None, f"{path} holds non-finite values"
    return Pristine(*(torch.from_numpy(a) for a in (mean, cov, window))), None

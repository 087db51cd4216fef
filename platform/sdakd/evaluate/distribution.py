"""FID and KID on patches: how far the distribution of outputs is from that of GT, in InceptionV3 features.

A validation set of SR images holds a handful of images; as SR papers do, each image gives `patches` crops of
`patch` px at seeded positions, the same positions for every output of that image and for its GT. The
InceptionV3 is torchmetrics' (torch-fidelity's FID network) with its weights from a local file: never downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor, nn

FID_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's release of the FID Inception
KID_SUBSETS = 100


def fid_unavailable(weights_path: str | Path | None) -> str | None:
    """Why FID/KID cannot be computed offline with `weights_path`, or None when they can."""
    return _inception(None if weights_path is None else str(weights_path))[1]


@functools.lru_cache(maxsize=2)
def _inception(weights_path: str | None) -> tuple[nn.Module | None, str | None]:
    if weights_path is None:
        return None, f"no FID weights given (needs torch-fidelity's InceptionV3 file {FID_WEIGHTS})"
    if not Path(weights_path).is_file():
        return None, f"FID weights {weights_path} not found"
    try:  # torch-fidelity reads the file with weights_only=False: refuse one that holds anything but tensors first
        torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - code inside, or not a torch file at all: no FID either way
        return None, f"{weights_path} is not a plain weights file ({' '.join(str(err).split())[:200]})"
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=weights_path)
    except ModuleNotFoundError as err:
        return None, f"torchmetrics' FID needs torch-fidelity ({err}): pip install torch-fidelity"
    except Exception as err:  # noqa: BLE001 - any unreadable or misfit file means the same thing: no FID
        return None, f"{weights_path} does not load as the FID InceptionV3: {' '.join(str(err).split())[:300]}"
    return metric.inception, None


def patch_positions(sizes: list[tuple[int, int]], patch: int, count: int, seed: int) -> list[list[tuple[int, int, int]]]:
    """Per image, `count` crops (top, left, side) at positions drawn from `seed`; images smaller than `patch`
    give crops of their shorter side."""
    generator = torch.Generator().manual_seed(seed)
    positions = []
    for height, width in sizes:
        side = min(patch, height, width)
        tops = torch.randint(0, height - side + 1, (count,), generator=generator).tolist()
        lefts = torch.randint(0, width - side + 1, (count,), generator=generator).tolist()
        positions.append([(t, l, side) for t, l in zip(tops, lefts)])
    return positions


def crop_patches(images: list[Tensor], positions: list[list[tuple[int, int, int]]]) -> Tensor:
    """(N*count, 3, side, side) crops of (1, 3, H, W) images; patches of other sides are resized by the Inception
    network anyway, so they are kept as they are only when all sides agree."""
    crops = [img[0, :, t : t + s, l : l + s] for img, spots in zip(images, positions) for t, l, s in spots]
    sides = {c.shape[-1] for c in crops}
    if len(sides) > 1:
        side = min(sides)
        crops = [torch.nn.functional.interpolate(c[None], size=(side, side), mode="bilinear")[0] for c in crops]
    return torch.stack(crops).clamp(0, 1)


class PatchDistance:
    """FID and KID of output patches against the GT patches, which are embedded once."""

    def __init__(self, weights_path: str | Path, gt_patches: Tensor, device: torch.device) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        inception, reason = _inception(str(weights_path))
        if inception is None:
            raise ValueError(reason)
        subset = min(len(gt_patches), 1000)
        # One network for both: passed as a module, it takes 8-bit images (torchmetrics' normalize=True conversion)
        self.fid = FrechetInceptionDistance(feature=inception, reset_real_features=False).to(device)
        self.kid = KernelInceptionDistance(
            feature=inception, reset_real_features=False, subsets=KID_SUBSETS, subset_size=subset
        ).to(device)
        self.device = device
        for metric in (self.fid, self.kid):
            metric.update(_bytes(gt_patches).to(device), real=True)

    @torch.no_grad()
    def __call__(self, patches: Tensor) -> dict[str, float]:
        for metric in (self.fid, self.kid):
            metric.reset()  # keeps the GT features
            metric.update(_bytes(patches).to(self.device), real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # KID's random subsets: the same draw for every evaluation
            kid_mean, _ = self.kid.compute()
        return {"fid": float(self.fid.compute()), "kid": float(kid_mean)}


def _bytes(images: Tensor) -> Tensor:
    return (images * 255).byte()  # exactly torchmetrics' own conversion of [0, 1] floats (normalize=True)

"""The second-order degradation on the training device: determinism, agreement with the loader path stage by stage,
the draws' coverage of the configured ranges, and the batch source the engine trains on."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sdakd.data import StepBatches, build_dataset
from sdakd.data.degrade import add_noise, apply_second_order, fft_blur, pil_jpeg, resize
from sdakd.data.degrade_device import batch_blur, conv_blur, degrade_batch, degrade_on_device
from sdakd.data.draws import RESIZE_MODES, Kernels, SecondOrderParams, draw_second_order
from sdakd.data.jpeg import LUMA_TABLE, jpeg, quant_tables
from sdakd.data.source import StepSource
from sdakd.errors import SdakdError
from sdakd.experiment import Placement, build_experiment

CPU = torch.device("cpu")
PARAMS = SecondOrderParams()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("photos")
    build_dataset(out)
    return out


def second_order_batches(photos: Path, **options) -> StepBatches:
    return StepBatches(photos, **{"batch_size": 3, "gt_size": 64, "scale": 4, "degradation": "second_order",
                                  "seed": 3, **options})


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image, in dB, for values in [0, 1]."""
    return -10 * torch.log10(((a - b) ** 2).flatten(1).mean(1))


def crops(photos: Path, count: int = 6, size: int = 96) -> torch.Tensor:
    return StepBatches(photos, batch_size=count, gt_size=size, scale=4, seed=0)[0]["hr"]


# ---------------------------------------------------------------- determinism and resume


def test_a_device_batch_is_a_pure_function_of_seed_and_step(photos: Path) -> None:
    source = StepSource(second_order_batches(photos), CPU, num_workers=0, degrade_on="device")
    resumed = StepSource(second_order_batches(photos), CPU, num_workers=0, degrade_on="device")  # a new process
    first = source(5)
    assert first["lr"].shape == (3, 3, 16, 16) and first["hr"].shape == (3, 3, 64, 64)
    assert torch.equal(first["lr"], (first["lr"] * 255).round() / 255)  # 8-bit LR, as the loader's
    for key in ("lr", "hr"):
        assert torch.equal(source(5)[key], first[key]) and torch.equal(resumed(5)[key], first[key])
        assert not torch.equal(source(6)[key], first[key])


@pytest.mark.parametrize("degradation, degrade_on", [("second_order", "loader"), ("bicubic", "device")])
def test_the_loader_path_is_served_as_the_loader_makes_it(photos: Path, degradation: str, degrade_on: str) -> None:
    batches = second_order_batches(photos, degradation=degradation)  # bicubic always degrades in the loader
    served = StepSource(batches, CPU, num_workers=0, degrade_on=degrade_on)(2)
    assert all(torch.equal(served[k], batches[2][k]) for k in ("lr", "hr"))


def test_loader_processes_serve_the_same_batches_and_resume_anywhere(photos: Path) -> None:
    in_process = StepSource(second_order_batches(photos), CPU, num_workers=0, degrade_on="device")
    workers = StepSource(second_order_batches(photos), CPU, num_workers=2, degrade_on="device")
    rng = torch.get_rng_state()
    for step in (4, 5, 6, 2, 3):  # consecutive, then a resume at an earlier step restarts the loader there
        served = workers(step)
        assert torch.equal(torch.get_rng_state(), rng)  # starting loaders leaves the training's RNG stream alone
        expected = in_process(step)
        assert all(torch.equal(served[k], expected[k]) for k in ("lr", "hr"))


def test_two_ranks_see_one_double_batch_on_the_device(photos: Path) -> None:
    whole = StepSource(second_order_batches(photos, batch_size=4), CPU, 0, "device")(9)
    parts = [StepSource(second_order_batches(photos, batch_size=2, rank=r, world_size=2), CPU, 0, "device")(9)
             for r in (0, 1)]
    assert torch.equal(torch.cat([p["hr"] for p in parts]), whole["hr"])
    # a grouped convolution over 2 or 4 images may sum in another order: a rare 8-bit rounding flip at most
    assert (torch.cat([p["lr"] for p in parts]) - whole["lr"]).abs().max() <= 1.01 / 255


def test_gcfsr_factors_degrade_in_groups_and_come_back_at_hr_size(photos: Path) -> None:
    batches = second_order_batches(photos, batch_size=6, scale=1, scales=(2, 4))
    clean = batches.clean(1)
    batch = degrade_on_device(clean, 1, CPU)
    assert batch["lr"].shape == batch["hr"].shape == (6, 3, 64, 64)
    assert torch.equal(batch["cond"], clean["cond"]) and set(batch["cond"].tolist()) == {2.0, 4.0}
    for i, factor in enumerate(clean["cond"].int().tolist()):  # each sample as if degraded alone at its factor
        alone = degrade_on_device({"hr": clean["hr"][i : i + 1], "draws": clean["draws"].select(slice(i, i + 1)),
                                   "cond": clean["cond"][i : i + 1]}, 1, CPU)["lr"]
        assert (alone[0] - batch["lr"][i]).abs().max() <= 1.01 / 255, factor


# ---------------------------------------------------------------- the two appliers, stage by stage


def test_blur_as_one_grouped_convolution_matches_the_loaders_fft_blur(photos: Path) -> None:
    hr = crops(photos)
    draws = draw_second_order(torch.Generator().manual_seed(1), range(len(hr)), PARAMS)
    for kernels in (draws.first.blur, draws.second.blur, draws.sinc):
        for x in (hr, hr[..., :9, :14]):  # reflect padding, and the replicate fallback of tiny images
            one = [Kernels(kernels.weights[i : i + 1], kernels.sizes[i : i + 1]) for i in range(len(x))]
            per_sample = torch.cat([fft_blur(x[i : i + 1], one[i]) for i in range(len(x))])
            for blur in (conv_blur, batch_blur):  # what CUDA runs, and what CPU tensors run
                assert (blur(x, kernels) - per_sample).abs().max() < 1e-5


def test_resize_and_noise_of_a_batch_equal_those_of_each_sample(photos: Path) -> None:
    hr = crops(photos)
    draws = draw_second_order(torch.Generator().manual_seed(2), range(len(hr)), PARAMS)
    assert draws.first.gaussian.any() and not draws.first.gaussian.all()  # both noise kinds exercised
    for mode in RESIZE_MODES:
        batched = resize(hr, (37, 53), mode)
        assert torch.equal(batched, torch.cat([resize(hr[i : i + 1], (37, 53), mode) for i in range(len(hr))]))
    noisy = add_noise(hr, draws.first)
    for i in range(len(hr)):
        assert torch.equal(noisy[i : i + 1], add_noise(hr[i : i + 1], draws.select(slice(i, i + 1)).first))


def test_noise_has_the_drawn_strength(photos: Path) -> None:
    flat = torch.full((1, 3, 256, 256), 0.5)
    drawn = draw_second_order(torch.Generator().manual_seed(0), [0], PARAMS).first
    sigma = 20 / 255
    gauss = replace(drawn, gaussian=torch.tensor([True]), gray=torch.tensor([False]),
                    strength=torch.tensor([sigma], dtype=torch.float64))
    residual = add_noise(flat, gauss) - flat
    assert abs(residual.std().item() / sigma - 1) < 0.02 and abs(residual.mean().item()) < 1e-3
    gray = add_noise(flat, replace(gauss, gray=torch.tensor([True]))) - flat
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    # Poisson on a ramp of 256 levels: rate x * 256 per pixel, so the residual's variance is scale^2 * x / 256
    ramp = (torch.arange(256.0) / 255).view(1, 1, 1, 256).expand(1, 3, 256, 256)
    poisson = replace(gauss, gaussian=torch.tensor([False]), strength=torch.tensor([0.5], dtype=torch.float64))
    residual = (add_noise(ramp, poisson) - ramp)[..., 64:192]
    expected = 0.5**2 * ramp[..., 64:192] / 256
    assert abs(residual.var().item() / expected.mean().item() - 1) < 0.05


def test_torch_jpeg_tables_are_libjpegs() -> None:
    tables = quant_tables(torch.tensor([50, 100, 75, 10]))
    assert torch.equal(tables[0, 0], torch.tensor(LUMA_TABLE, dtype=torch.float64))  # quality 50: the table itself
    assert torch.equal(tables[1], torch.ones(2, 8, 8, dtype=torch.float64))
    assert torch.equal(tables[2, 0], torch.floor((torch.tensor(LUMA_TABLE) * 50.0 + 50) / 100).double())
    assert tables[3].max() == 255  # 5000 / 10 = 500 %: clamped to baseline's 8 bits


def test_torch_jpeg_agrees_with_libjpeg_far_closer_than_jpeg_to_the_original(photos: Path) -> None:
    """Not bit-equal: libjpeg works in integers (islow DCT, fixed-point colour, its own chroma rounding), this in
    floats. Bound: >= 40 dB PSNR against PIL's output (measured 44-50 dB), while JPEG itself loses 30-43 dB."""
    hr = crops(photos, size=96)[..., :61, :77]  # sizes off the 16-pixel grid: libjpeg's edge extension
    for quality in (30, 50, 75, 95):
        q = torch.full((len(hr),), quality)
        ours = jpeg(hr, q)
        libjpeg = torch.cat([pil_jpeg(hr[i : i + 1], q[i : i + 1]) for i in range(len(hr))])
        assert torch.equal(ours, (ours * 255).round() / 255)
        assert psnr(ours, libjpeg).min() >= 40, quality
        # and the gap to libjpeg stays under half of libjpeg's own error (in MSE), even at quality 95
        assert (psnr(ours, libjpeg) - psnr(libjpeg, hr)).min() >= 3, quality


def test_whole_pipeline_agrees_where_its_noise_is_gaussian(photos: Path) -> None:
    """End to end the paths differ by the JPEG rounding above, and by Poisson noise: torch.poisson consumes its
    generator by pixel value, so once one code differs the rest of the field is another draw (same law)."""
    hr = crops(photos, count=12, size=128)
    draws = draw_second_order(torch.Generator().manual_seed(4), range(len(hr)), PARAMS)
    loader = torch.cat([apply_second_order(hr[i : i + 1], 4, draws.select(slice(i, i + 1)), fft_blur, pil_jpeg)
                        for i in range(len(hr))])
    device = degrade_batch(hr, 4, draws)
    gaussian = draws.first.gaussian & draws.second.gaussian
    assert gaussian.sum() >= 2
    assert psnr(device, loader)[gaussian].min() >= 33


# ---------------------------------------------------------------- the draws cover the configured ranges


def test_draws_cover_the_configured_ranges() -> None:
    n = 1500
    draws = [draw_second_order(torch.Generator().manual_seed(s), [s], PARAMS) for s in range(n)]

    def near(count: int, p: float) -> bool:  # within 5 binomial standard deviations
        return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1

    def covers(values: list[float], low: float, high: float, bins: int = 10) -> bool:
        filled = Counter(min(int((v - low) / (high - low) * bins), bins - 1) for v in values)
        return low <= min(values) and max(values) <= high and len(filled) == bins

    for name, stage in (("first", PARAMS.first), ("second", PARAMS.second)):
        rounds = [getattr(d, name) for d in draws]
        factors = [r.resize_factor for r in rounds]
        up, down, keep = stage.resize_prob
        assert near(sum(f > 1 for f in factors), up) and near(sum(f < 1 for f in factors), down)
        assert near(sum(f == 1 for f in factors), keep)
        assert covers([f for f in factors if f > 1], 1.0, stage.resize_range[1])
        assert covers([f for f in factors if f < 1], stage.resize_range[0], 1.0)
        assert all(near(sum(r.resize_mode == m for r in rounds), 1 / 3) for m in RESIZE_MODES)
        sizes = Counter(int(r.blur.sizes[0]) for r in rounds)
        assert near(sizes.pop(1, 0), 1 - stage.blur_prob)
        assert sorted(sizes) == list(PARAMS.kernel_sizes)
        assert all(near(c, stage.blur_prob / len(PARAMS.kernel_sizes)) for c in sizes.values())
        assert all(abs(r.blur.weights.sum().item() - 1) < 1e-5 for r in rounds)
        gaussian = [bool(r.gaussian[0]) for r in rounds]
        assert near(sum(gaussian), stage.gaussian_noise_prob)
        assert near(sum(bool(r.gray[0]) for r in rounds), stage.gray_noise_prob)
        strengths = [float(r.strength[0]) for r in rounds]
        assert covers([s * 255 for s, g in zip(strengths, gaussian) if g], *stage.noise_range)
        assert covers([s for s, g in zip(strengths, gaussian) if not g], *stage.poisson_scale_range)
    for column, stage in ((0, PARAMS.first), (1, PARAMS.second)):
        qualities = [int(d.quality[0, column]) for d in draws]
        assert covers(qualities, *stage.jpeg_range)
    assert near(sum(int(d.sinc.sizes[0]) == PARAMS.final_kernel_size for d in draws), PARAMS.final_sinc_prob)
    assert near(sum(d.sinc_then_jpeg for d in draws), 0.5)


# ---------------------------------------------------------------- config and wiring


def test_degrade_on_is_checked_and_the_engine_trains_on_device_batches(small_cfg) -> None:
    with pytest.raises(SdakdError, match="degrade_on"):
        small_cfg("data.degrade_on=gpu")
    cfg = small_cfg("data.degradation=second_order", "teacher.pretrain.iters=0", "teacher.pretrain.d_iters=0")
    assert cfg.data.degrade_on == "device"
    exp = build_experiment(cfg, Placement(writer=False))
    batches = StepBatches(exp.data.root, batch_size=2, gt_size=32, scale=4, degradation="second_order", seed=cfg.seed)
    served = exp.engine.batches(3)
    expected = degrade_on_device(batches.clean(3), 4, CPU)
    assert all(torch.equal(served[k], expected[k]) for k in ("lr", "hr"))

"""GCFSR family: official checkpoint layout, narrow students, scale conditioning, taps, face data, every method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sdakd.config.load import load_config
from sdakd.data import StepBatches, bicubic_down, bicubic_up, build_dataset, factor_val_pairs
from sdakd.errors import SdakdError
from sdakd.methods import METHODS
from sdakd.models.from_config import sr_generator
from sdakd.models import FeatureTaps, build_discriminator, build_generator, feature_channels, load_weights, pair_taps
from sdakd.experiment import Placement, build_experiment
from sdakd.run_folder import final_metrics

SCALES = (4, 8, 16, 32)
SMALL = dict(out_size=64, num_feat=32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Nets this small gain nothing from intra-op threads, and on a busy CPU they stall (5x slower measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gcfsr(width: float = 1.0):
    torch.manual_seed(0)
    return build_generator("gcfsr", width=width, **SMALL)


def official_noise(model) -> dict[str, torch.Tensor]:
    """StyleGAN2's fixed-noise buffers as the official GCFSR saves them (shapes from its own formula)."""
    layers = (int(np.log2(model.out_size)) - 4) * 2 + 1
    return {f"noises.noise{i}": torch.randn(1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2)) for i in range(layers)}


def test_official_checkpoint_layout_round_trip(tmp_path: Path) -> None:
    source, ema = gcfsr(), gcfsr()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)  # params_ema and params must be told apart
    keys = set(source.state_dict())
    # official gcfsr_arch.py names (ConvLayer list indices included: a downsampling layer is blur, conv, act)
    assert {
        "conv_body_first.0.weight", "conv_body_first.1.bias", "conv_body_down.0.1.weight", "conv_body_down.0.2.bias",
        "final_down2.1.weight", "final_linear.weight", "condition_scale1.0.weight", "condition_shift.2.0.bias",
        "style_conv1.modulated_conv.modulation.weight", "style_conv1.weight", "style_conv1.activate.bias",
        "to_rgb1.bias", "style_convs.3.modulated_conv.weight", "to_rgbs.1.modulated_conv.modulation.bias",
    } <= keys
    path = tmp_path / "gcfsr.pth"
    torch.save({"params": source.state_dict() | official_noise(source),
                "params_ema": ema.state_dict() | official_noise(ema)}, path)
    x, cond = torch.rand(1, 3, 64, 64), torch.tensor([8.0])
    for key, want in ((None, ema), ("params", source)):  # params_ema first, as the official inference loads
        loaded = load_weights(gcfsr().eval(), path, key=key)
        assert all(torch.equal(v, want.state_dict()[k]) for k, v in loaded.state_dict().items())
        assert torch.equal(loaded(x, cond), want.eval()(x, cond))

    d = build_discriminator("stylegan2", out_size=64, num_feat=32)
    assert {"conv_body.0.0.weight", "conv_body.1.conv2.1.weight", "conv_body.1.skip.1.weight",
            "final_conv.1.bias", "final_linear.1.weight"} <= set(d.state_dict())
    torch.save({"params": d.state_dict()}, tmp_path / "d.pth")
    fresh = load_weights(build_discriminator("stylegan2", out_size=64, num_feat=32), tmp_path / "d.pth")
    assert all(torch.equal(v, d.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_narrow_student_and_student_d_train_at_64() -> None:
    student = gcfsr(width=0.25)
    d = build_discriminator("stylegan2", width=0.25, **SMALL)
    assert student.style_conv1.out_channels == 8 and d.final_linear[0].weight.shape == (8, 8 * 16)
    x, cond = torch.rand(2, 3, 64, 64), torch.tensor([4.0, 32.0])
    sr = student(x, cond)
    logits = d(sr)
    assert sr.shape == x.shape and logits.shape == (2, 1)
    logits.mean().backward()
    for net in (student, d):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_the_depth_follows_out_size() -> None:
    with pytest.raises(SdakdError, match="no depth of its own"):
        sr_generator(load_config("gcfsr-tiny", overrides=["teacher.num_block=4"]))


def test_the_upscaling_factor_conditions_the_output() -> None:
    g = gcfsr().eval()  # eval: the noise is the same on every call, so only the factor differs
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        x4, x4_again, x32 = g(x, torch.tensor([4.0])), g(x, torch.tensor([4.0])), g(x, torch.tensor([32.0]))
    assert torch.equal(x4, x4_again)
    assert (x4 - x32).abs().max() > 1e-3


def test_pair_taps_match_teacher_and_student_per_resolution() -> None:
    teacher, student = gcfsr(), gcfsr(width=0.25)
    pairs = pair_taps(teacher, student)
    assert pairs == [("style_conv1", "style_conv1"), ("style_convs.1", "style_convs.1"),
                     ("style_convs.3", "style_convs.3")]
    assert [(feature_channels(teacher, t), feature_channels(student, s)) for t, s in pairs] == [(32, 8)] * 3
    with FeatureTaps(teacher, [t for t, _ in pairs]) as t_taps, FeatureTaps(student, [s for _, s in pairs]) as s_taps:
        teacher(torch.rand(1, 3, 64, 64), torch.tensor([8.0]))
        student(torch.rand(1, 3, 64, 64), torch.tensor([8.0]))
        sides = [(t_taps.features[t].shape[-1], s_taps.features[s].shape[-1]) for t, s in pairs]
    assert sides == [(16, 16), (32, 32), (64, 64)]
    assert pair_taps(teacher, student, every=2) == pairs[1:]


# ---------------------------------------------------------------- face data and the methods


def draw_faces(folder: Path, count: int = 5, size: int = 64) -> Path:
    """Procedural "faces": a skin-toned ellipse with two eyes and a mouth, jittered, on a dark background."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(count):
        img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(img)
        dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
        draw.ellipse([10 + dx, 6 + dy, 54 + dx, 60 + dy], fill=tuple(int(v) for v in rng.integers(150, 240, 3)))
        for eye in (24, 40):
            draw.ellipse([eye - 5 + dx, 24 + dy, eye + 5 + dx, 30 + dy], fill=(250, 250, 250))
            draw.ellipse([eye - 2 + dx, 25 + dy, eye + 2 + dx, 29 + dy], fill=(40, 30, 20))
        draw.arc([22 + dx, 36 + dy, 42 + dx, 50 + dy], 20, 160, fill=(150, 40, 50), width=2)
        img.save(folder / f"face{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    build_dataset(root / "shards", images_dir=draw_faces(root / "images"), test_count=0)
    return root / "shards"


def test_face_batches_carry_the_lr_at_hr_size_and_the_factor(faces: Path) -> None:
    batches = StepBatches(faces, batch_size=3, gt_size=64, scale=1, scales=SCALES, seed=1)
    batch = batches[5]
    assert batch["lr"].shape == batch["hr"].shape == (3, 3, 64, 64)
    for lr, hr, factor in zip(batch["lr"], batch["hr"], batch["cond"].tolist()):
        assert factor in SCALES
        assert torch.equal(lr, bicubic_up(bicubic_down(hr, int(factor)), int(factor)))
    assert all(torch.equal(batch[k], batches[5][k]) for k in batch)
    pairs = factor_val_pairs(faces, [4, 8, 8], 64)
    assert [(name, float(cond)) for name, _, _, cond in pairs] == [
        ("face03_x4", 4.0), ("face03_x8", 8.0), ("face04_x4", 4.0), ("face04_x8", 8.0)
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")  # one pretrained micro teacher for every method


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_trains_the_gcfsr_family(method: str, faces: Path, cache: Path) -> None:
    cfg = load_config("gcfsr-tiny", overrides=[
        f"method={method}", f"data.root={faces}", f"run.cache_dir={cache}", "data.batch_size=2",
        "stages.s1.iters=1", "stages.s2.iters=1", "stages.s3.iters=1", "teacher.num_feat=8", "teacher.d_num_feat=8",
        "teacher.pretrain.iters=2", "teacher.pretrain.d_iters=1", "teacher.pretrain.batch_size=2",
        "methods.dcd.tap_every=1", "run.latency_repeats=1", "run.log_every=1",
    ])
    exp = build_experiment(cfg, Placement(writer=False))
    exp.engine.run()
    metrics = final_metrics(exp)
    assert set(metrics["stages"]) == {"s1", "s2", "s3"}
    assert np.isfinite(metrics["student"]["psnr_y"]) and metrics["info"]["cost_input"] == "1x3x64x64 generator input"
    assert len(exp.validator.pairs) == 2 * len(SCALES)  # every val face at every factor

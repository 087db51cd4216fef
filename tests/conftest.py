"""Shared fixtures: small configs and a tiny frozen teacher, all on CPU."""

from __future__ import annotations

import pytest
import torch

from sdakd.config.load import load_config
from sdakd.models.from_config import sr_generator
from sdakd.models import build_discriminator
from sdakd.teacher.frozen import Teacher

SMALL = [
    "stages.s1.iters=2",
    "stages.s2.iters=2",
    "stages.s3.iters=2",
    "data.batch_size=2",
    "data.gt_size=32",
    "run.log_every=1",
    "loss.perceptual.weight=0.05",  # exercised, but with one cheap VGG layer
    "loss.perceptual.layers={conv1_2: 1.0}",
]


@pytest.fixture
def small_cfg(tmp_path):
    def make(*overrides: str):
        return load_config("tiny", overrides=[*SMALL, f"run.cache_dir={tmp_path / 'cache'}", *overrides])

    return make


@pytest.fixture
def small_teacher(small_cfg):
    cfg = small_cfg()
    torch.manual_seed(123)
    t = cfg.teacher
    g = sr_generator(cfg)
    d = build_discriminator(t.d_arch, num_feat=t.d_num_feat)
    return Teacher(g, d, identity="test", source="test")


def synthetic_batches(batch_size: int = 2, gt: int = 32, scale: int = 4):
    """A pure function of the step, like the real loader: the same step always gives the same batch."""

    def batch(step: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(1000 + step)
        hr = torch.rand(batch_size, 3, gt, gt, generator=gen)
        return {"hr": hr, "lr": torch.nn.functional.avg_pool2d(hr, scale)}

    return batch

"""The networks an experiment config names: the teacher family at any width, and discriminators.

Teacher and students share one family (the teacher's architecture); a student is that family at `student.width`
and `student.num_block`. Pipeline, teacher, methods and evaluation all build their networks here.
"""

from __future__ import annotations

from torch import nn

from sdakd.config.schema import ExperimentConfig
from sdakd.models.factory import discriminator_from_spec, generator_from_spec


def sr_generator(cfg: ExperimentConfig, width: float = 1.0, depth: int | None = None) -> nn.Module:
    """The teacher's architecture at `width` (and `depth` blocks)."""
    t = cfg.teacher
    extra = {"num_grow_ch": t.num_grow_ch} if t.num_grow_ch is not None else {}
    return generator_from_spec(
        t.arch, scale=cfg.data.scale, depth=depth or t.num_block, size=cfg.data.gt_size, width=width,
        num_feat=t.num_feat, **extra,
    )


def student_generator(cfg: ExperimentConfig) -> nn.Module:
    return sr_generator(cfg, cfg.student.width, cfg.student.num_block)


def discriminator(cfg: ExperimentConfig, width: float) -> nn.Module:
    """The teacher's discriminator family at `width` (1.0: the teacher's own D)."""
    return discriminator_from_spec(
        cfg.teacher.d_arch, size=cfg.data.gt_size, width=width, num_feat=cfg.teacher.d_num_feat
    )

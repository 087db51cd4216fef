"""Teacher and student networks (Real-ESRGAN and GCFSR families), their registries, feature taps and checkpoint I/O."""

from sdakd.models.factory import (
    DISCRIMINATORS,
    GENERATORS,
    build_discriminator,
    build_generator,
    discriminator_from_spec,
    generate,
    generator_from_spec,
)
from sdakd.models.gcfsr import GCFSR
from sdakd.models.rrdbnet import RRDB, RRDBNet, ResidualDenseBlock
from sdakd.models.srvgg import SRVGGNetCompact
from sdakd.models.stylegan2 import StyleGAN2Discriminator
from sdakd.models.taps import FeatureTaps, feature_channels, pair_taps
from sdakd.models.unet_disc import UNetDiscriminatorSN
from sdakd.models.weights import load_weights, save_official

__all__ = [
    "DISCRIMINATORS",
    "GCFSR",
    "GENERATORS",
    "RRDB",
    "RRDBNet",
    "ResidualDenseBlock",
    "SRVGGNetCompact",
    "StyleGAN2Discriminator",
    "UNetDiscriminatorSN",
    "FeatureTaps",
    "build_discriminator",
    "build_generator",
    "discriminator_from_spec",
    "feature_channels",
    "generate",
    "generator_from_spec",
    "load_weights",
    "pair_taps",
    "save_official",
]

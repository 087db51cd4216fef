"""Loss terms: pixel, perceptual (timm VGG19), adversarial, and the distillation terms."""

from sdakd.losses.adversarial import AdversarialLoss
from sdakd.losses.feature_map import FeatureAdapters, feature_map_loss
from sdakd.losses.perceptual import PerceptualLoss

__all__ = ["AdversarialLoss", "FeatureAdapters", "PerceptualLoss", "feature_map_loss"]

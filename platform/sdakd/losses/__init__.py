"""Loss terms: pixel, perceptual (timm VGG19), adversarial, and the distillation terms."""

from sdakd.losses.adversarial import AdversarialLoss
from sdakd.losses.feature_map import FeatureAdapters, feature_map_loss
from sdakd.losses.perceptual import PerceptualLoss
from sdakd.losses.relational import content_relation_loss, relational_kd

__all__ = ["AdversarialLoss", "FeatureAdapters", "PerceptualLoss", "feature_map_loss"]
__all__ += ["content_relation_loss", "relational_kd"]

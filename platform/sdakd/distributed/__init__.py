"""Ray Train adapter: the only package that imports ray.train."""

from sdakd.distributed.cluster import connect
from sdakd.distributed.train import train_distributed
from sdakd.distributed.trial import tune_trial

__all__ = ["connect", "train_distributed", "tune_trial"]

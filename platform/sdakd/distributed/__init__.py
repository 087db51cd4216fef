"""Ray Train adapter: the only package that imports ray.train."""

from sdakd.distributed.train import train_distributed

__all__ = ["train_distributed"]

"""Data: the memory-mapped store with a checked manifest, HR -> LR degradations, step-indexed loaders."""

from sdakd.data.dataset import Dataset, ensure_dataset, train_batches
from sdakd.data.degrade import DEGRADATIONS, SecondOrderParams, bicubic_down, bicubic_up, second_order
from sdakd.data.loader import StepBatches, batch_loader, factor_val_pairs, step_seed, val_pairs
from sdakd.data.samples import SAMPLE_PHOTOS, sample_photo_paths
from sdakd.data.build import build_dataset
from sdakd.data.store import load_manifest, read_split

__all__ = [
    "Dataset",
    "ensure_dataset",
    "train_batches",
    "DEGRADATIONS",
    "SAMPLE_PHOTOS",
    "SecondOrderParams",
    "StepBatches",
    "batch_loader",
    "bicubic_down",
    "bicubic_up",
    "build_dataset",
    "factor_val_pairs",
    "load_manifest",
    "read_split",
    "sample_photo_paths",
    "second_order",
    "step_seed",
    "val_pairs",
]

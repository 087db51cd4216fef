"""sdakd: distil super-resolution GANs into small students (SDAKD and its baselines)."""

__version__ = "0.1.0"

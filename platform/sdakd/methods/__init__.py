"""Distillation methods: one file each, registered by name; `method:` in any config picks one."""

from sdakd.methods.registry import METHODS
from sdakd.methods import sdakd as _sdakd  # noqa: F401  (registers "sdakd")

__all__ = ["METHODS"]

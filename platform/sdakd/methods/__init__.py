"""Distillation methods: one file each, registered by name; `method:` in any config picks one."""

from sdakd.methods.registry import METHODS
from sdakd.methods import sdakd as _sdakd  # noqa: F401  (registers "sdakd")
from sdakd.methods import akdg as _akdg  # noqa: F401  (registers "akdg")
from sdakd.methods import crd as _crd  # noqa: F401  (registers "crd")
from sdakd.methods import dcd as _dcd  # noqa: F401  (registers "dcd")
from sdakd.methods import output_kd as _output_kd  # noqa: F401  (registers "output_kd")
from sdakd.methods import vanilla as _vanilla  # noqa: F401  (registers "vanilla")

__all__ = ["METHODS"]

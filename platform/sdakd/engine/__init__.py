"""The stage loop: plain PyTorch; Ray and MLflow stay in the adapters."""

from sdakd.engine.loop import Callbacks, Engine, Position, unwrap
from sdakd.engine.progress import ConsoleProgress
from sdakd.engine.stage import Stage

__all__ = ["Callbacks", "ConsoleProgress", "Engine", "Position", "Stage", "unwrap"]

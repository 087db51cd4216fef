"""The one exception type users see: a clear message, no traceback from the CLI."""

from __future__ import annotations

import re


class SdakdError(Exception):
    """Bad input or state the user can fix; the message names the file, field and allowed values."""


# torch.load's advice on a file that weights_only=True refused: load it with weights_only=False, or allowlist its
# globals. Either runs the file's code, so users never see it; the cause torch names after it stays.
_TORCH_ADVICE = (
    re.compile(r"Weights only load failed\..*?WeightsUnpickler error:", re.S),
    re.compile(r"Please use `torch\.serialization\.[^\n]*"),
    re.compile(r"Check the documentation of torch\.load[^\n]*"),
    re.compile(r"[^.\n]*weights_only[^.\n]*False[^.\n]*\.?"),
)


def without_torch_advice(message: str) -> str:
    for advice in _TORCH_ADVICE:
        message = advice.sub("", message)
    return "\n".join(line.rstrip() for line in message.splitlines() if line.strip())


def load_failure(err: BaseException) -> str:
    """Why reading a weights file failed, in one line and without torch's advice to turn the safety check off."""
    reason = " ".join(without_torch_advice(str(err)).split())
    if reason:
        return reason
    return "the file ends early (empty or cut short)" if isinstance(err, EOFError) else type(err).__name__

"""The one exception type users see: a clear message, no traceback from the CLI."""

from __future__ import annotations

SHOWN_CHARS = 200  # the longest value an error message repeats
LINE_CHARS = 2000  # the longest line of any error the CLI prints


class SdakdError(Exception):
    """Bad input or state the user can fix; the message names the file, field and allowed values."""


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` cut to `limit` characters for an error message, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)`, cut as `cut` does: how an error message quotes a value it was given."""
    return cut(repr(value), limit)


def bounded(message: str) -> str:
    """Each line of `message` cut to LINE_CHARS: no error prints a megabyte of its input back."""
    return "\n".join(cut(line, LINE_CHARS) for line in message.splitlines())


# torch.load's advice on a file that weights_only=True refused: load it with weights_only=False, or allowlist its
# globals. Either runs the file's code, so users never see it; the cause torch names after it stays. Each is a
# sentence of torch's message (split at ". " and line ends, so `torch.load` stays whole) starting so, or one that
# tells to set weights_only to False.
_ADVICE_OPENINGS = (
    "Weights only load failed", "This file can still be loaded", "In PyTorch 2.6, we changed", "(1) In PyTorch",
    "(2) Alternatively", "Do it only if you", "Please use `torch.serialization.",
    "Check the documentation of torch.load",
)
_UNPICKLER = "WeightsUnpickler error:"  # older torch: the cause follows this on the advice's own line


def _is_advice(sentence: str) -> bool:
    text = sentence.strip()
    return text.startswith(_ADVICE_OPENINGS) or ("weights_only" in text and "False" in text)


def without_torch_advice(message: str) -> str:
    """`message` without torch's advice to turn the weights_only check off, without blank lines; linear time."""
    lines = []
    for line in message.splitlines():
        _, found, cause = line.partition(_UNPICKLER)
        sentences = (cause.lstrip() if found else line).split(". ")
        kept = [s for s in sentences if not _is_advice(s)]
        text = ". ".join(kept).rstrip()
        if text.strip():
            lines.append(text + ("." if kept[-1] is not sentences[-1] and not text.endswith(".") else ""))
    return "\n".join(lines)


def load_failure(err: BaseException) -> str:
    """Why reading a weights file failed, in one line and without torch's advice to turn the safety check off."""
    reason = " ".join(without_torch_advice(str(err)).split())
    if reason:
        return reason
    return "the file ends early (empty or cut short)" if isinstance(err, EOFError) else type(err).__name__

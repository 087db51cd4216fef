"""The one exception type users see: a clear message, no traceback from the CLI."""


class SdakdError(Exception):
    """Bad input or state the user can fix; the message names the file, field and allowed values."""

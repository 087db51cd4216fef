"""Files: fingerprints (what runs record about the weights files they read), and the files a command writes where
the user named them (`--out`): never onto an input, never half-written."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterable, Iterator

from sdakd.errors import SdakdError


def sha256_of(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(path: Path | str) -> str:
    """`<file name> sha256:<first 12 hex digits>`: enough to tell two weights files apart in a tag."""
    return f"{Path(path).name} sha256:{sha256_of(path)[:12]}"


def same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name one existing file: the same path once links are resolved, or the same inode (a
    hard link)."""
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except (OSError, RuntimeError):  # one does not exist (yet), or a link loop
        return False


@contextlib.contextmanager
def output_file(out: Path, inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """A temporary file beside `out` to write: it replaces `out` when the block ends, and is gone when the block
    fails (an existing `out` stays as it was). `out` must not be a folder or one of `inputs`; its folder is made."""
    if out.is_dir():
        raise SdakdError(f"--out {out} is a folder; name the file to write")
    for source in inputs:
        if same_file(out, source):
            raise SdakdError(f"--out {out} is the input {source}; name a new file")
    existing = next(folder for folder in out.absolute().parents if folder.exists())
    if not existing.is_dir():
        raise SdakdError(f"--out {out}: {existing} is a file, not a folder")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.open("wb").close()  # what a writer would fail at, as one message (torch's: a C++ RuntimeError)
    except OSError as err:
        raise SdakdError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)

"""Where `sdakd upscale` writes each image, and the one rule every output keeps: it never replaces an input file
(compared by resolved path and by inode, so hard links and symbolic links count), and never lands inside a folder
the same call reads. A call that would break it is refused before any work; entries of an input folder that are
not regular files (FIFOs, sockets, broken links) are skipped and named."""

from __future__ import annotations

import stat
from pathlib import Path

from sdakd.errors import SdakdError

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what a folder input contributes
KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}  # fmt: skip


def kind_of(path: Path) -> str | None:
    """None for a regular file (links followed), else what `path` is instead."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "a broken link" if path.is_symlink() else "missing"
    return None if stat.S_ISREG(mode) else KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _identity(path: Path) -> tuple[int, int]:
    """What a hard link shares with its file: (device, inode)."""
    info = path.stat()
    return info.st_dev, info.st_ino


def _inputs(inputs: list[Path], out: Path) -> tuple[dict[Path, Path], list[str]]:
    """Each input image and its output path; the folder entries skipped, as `PATH: WHAT IT IS`."""
    pairs: dict[Path, Path] = {}
    skipped = []
    for item in inputs:
        if item.is_dir():
            for path in sorted(p for p in item.rglob("*") if p.suffix.lower() in SUFFIXES):
                kind = kind_of(path)
                if kind is None:
                    pairs[path] = out / path.relative_to(item)
                elif kind != "a folder":
                    skipped.append(f"{path}: {kind}")
        elif (kind := kind_of(item)) is None:
            pairs[item] = out / item.name
        elif kind == "missing":
            raise SdakdError(f"{item}: no such image file or folder")
        else:
            raise SdakdError(f"{item} is {kind}, not an image file: name image files or folders")
    if not pairs:
        raise SdakdError(f"no images in {', '.join(map(str, inputs))} (suffixes {', '.join(SUFFIXES)})")
    return pairs, skipped


def output_paths(inputs: list[Path], out: Path) -> tuple[dict[Path, Path], list[str]]:
    """Each input image and where its output goes: `out/NAME` for a file, `out/RELATIVE/PATH` for a folder's
    images (found recursively by suffix: SUFFIXES); and the folder entries skipped. Missing inputs, two inputs
    writing one output and any output breaking the rule above are refused before any work."""
    folders = [item.resolve() for item in inputs if item.is_dir()]
    for folder in folders:
        if out.resolve().is_relative_to(folder):
            raise SdakdError(f"--out {out} is inside {folder}, a folder this command reads: its outputs would be read "
                             "as inputs and could replace them; pick an --out outside it")
    pairs, skipped = _inputs(inputs, out)
    files = {_identity(source): source for source in pairs}
    targets: dict[Path, Path] = {}
    for source, target in pairs.items():
        resolved = target.resolve()
        inside = next((folder for folder in folders if resolved.is_relative_to(folder)), None)
        if inside is not None:
            raise SdakdError(f"{source}: its output {target} would be inside {inside}, a folder this command reads; "
                             "pick an --out outside it")
        same = files.get(_identity(target)) if kind_of(target) is None else None
        if same is not None:
            link = "" if resolved == same.resolve() else " (a hard link to it)"
            what = "it" if same == source else f"the input {same}"
            raise SdakdError(f"{source}: its output {target} would overwrite {what}{link}; pick another --out")
        if target in targets:
            raise SdakdError(f"{targets[target]} and {source} would both write {target}; upscale them separately")
        targets[target] = source
    return pairs, skipped

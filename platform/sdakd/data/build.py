"""Image folder -> the dataset store (store.py): decoded once, in parallel, straight into the pixel files.

Each worker decodes one image at a time and writes its pixels at an offset planned from the image headers, so the
build's memory is a few images whatever the folder holds. Nothing is resized unless `max_side` asks for it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import numpy as np
from PIL import Image, ImageOps

from sdakd.data.progress import Progress
from sdakd.data.replace import check_replaceable, swap_in
from sdakd.data.samples import HELD_OUT_PHOTOS, sample_photo_paths
from sdakd.data.store import FORMAT, MANIFEST, SPLITS, content_checksum, file_sha256
from sdakd.errors import SdakdError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# what a dataset folder holds (older Parquet datasets included, so that one can be rebuilt in place)
DATASET_FILE = re.compile(r"manifest\.json|(train|val|test)-\d+\.(u8|parquet)")
BUNDLED_MAX_SIDE = 512  # the bundled demo photos stay small: CPU demos and tests train on them
FILE_BYTES = 1 << 30  # pixel files are cut at about 1 GiB: a corrupt one is fetched again alone
TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Planned:
    path: Path
    split: str
    source_size: tuple[int, int]  # (width, height) as displayed (EXIF orientation applied)
    size: tuple[int, int]  # as stored
    file: int = -1
    offset: int = 0


def build_dataset(
    out_dir: str | Path,
    images_dir: str | Path | None = None,
    val_count: int = 2,
    test_count: int | None = None,
    max_side: int | None = None,
    min_side: int = 0,
    jobs: int = 1,
    progress: TextIO | None = None,
    report: Callable[[str], None] | None = None,
) -> Path:
    """Write the pixel files and `manifest.json` into `out_dir`; return the manifest path.

    Images are sorted by name; the last `test_count` (default 2) form the test split and the `val_count` before
    them the validation split, so the splits depend only on the names. The bundled photos (no `images_dir`) keep
    their fixed order, take scikit-image's held-out photos as the test split and are capped at 512 px. A user's
    images keep their full resolution unless `max_side` caps the longest side (bicubic); each one the cap changed
    is reported through `report`. EXIF orientation is applied. `min_side` (the GT crop) is checked on the stored
    size. No image (by its pixels) may sit in two splits. The dataset is built beside `out_dir` and swapped in only
    when complete: a failed build leaves the dataset already there as it was.
    """
    out = Path(out_dir)
    for field, value, lowest in (("val_count", val_count, 0), ("min_side", min_side, 0), ("jobs", jobs, 1)):
        _require_int(field, value, lowest)
    if test_count is not None:
        _require_int("test_count", test_count, 0)
    if images_dir is None and max_side is None:
        max_side = BUNDLED_MAX_SIDE
    if max_side is not None:
        _require_int("max_side", max_side, 1)
        if min_side > max_side:
            raise SdakdError(f"min_side={min_side} exceeds max_side={max_side}; allowed: min_side <= max_side")
    check_replaceable(out, DATASET_FILE, MANIFEST)
    sources = _split_sources(images_dir, val_count, test_count)
    plan = _plan([_planned(path, split, max_side, min_side) for path, split in sources])
    resized = [p for p in plan if p.size != p.source_size]
    if resized and report:
        first = resized[0]
        report(
            f"max_side={max_side}: downscaled {len(resized)} of {len(plan)} images (longest side), e.g. "
            f"{first.path.name} {first.source_size[0]}x{first.source_size[1]} -> {first.size[0]}x{first.size[1]}"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        names = _allocate(staging, plan)
        digests = _decode_all(staging, names, plan, jobs, progress)
        _check_disjoint(plan, digests)
        manifest = {
            "format": FORMAT,
            "source": _source_label(images_dir),
            "max_side": max_side,
            "counts": {split: sum(p.split == split for p in plan) for split in SPLITS},
            "files": [
                {"file": name, "split": split, "bytes": (staging / name).stat().st_size,
                 "sha256": file_sha256(staging / name)}
                for name, split in names
            ],
            "images": {split: _index(plan, digests, split) for split in SPLITS},
            "checksum": content_checksum((p.split, p.path.stem, d) for p, d in zip(plan, digests)),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest) + "\n")
        swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / MANIFEST


def _split_sources(images_dir: str | Path | None, val_count: int, test_count: int | None) -> list[tuple[Path, str]]:
    """(image, split) for every source image: ..., train, val x val_count, test x test_count, in name order."""
    if images_dir is None:
        photos = sample_photo_paths()
        held_out = [(path, "test") for path in sample_photo_paths(HELD_OUT_PHOTOS)] if test_count is None else []
        sources, test_count = photos, 0 if test_count is None else test_count
    else:
        sources, held_out = image_files(images_dir), []
        test_count = 2 if test_count is None else test_count
    if val_count + test_count >= len(sources):
        raise SdakdError(
            f"val_count={val_count} and test_count={test_count} leave no training image: "
            f"{_source_label(images_dir)} holds {len(sources)} images; allowed: val_count + test_count <= "
            f"{len(sources) - 1}"
        )
    train = len(sources) - val_count - test_count
    splits = ["train"] * train + ["val"] * val_count + ["test"] * test_count
    return list(zip(sources, splits)) + held_out


def image_files(images_dir: str | Path) -> list[Path]:
    folder = Path(images_dir)
    if not folder.exists():
        raise SdakdError(f"images_dir {folder} does not exist")
    if not folder.is_dir():
        raise SdakdError(f"images_dir {folder} is not a folder")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise SdakdError(f"images_dir {folder} holds no images; allowed suffixes: {', '.join(IMAGE_SUFFIXES)}")
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise SdakdError(
                f"images_dir {folder}: {stems[path.stem].name} and {path.name} share the name {path.stem!r}"
            )
        stems[path.stem] = path
    return files


def _planned(path: Path, split: str, max_side: int | None, min_side: int) -> Planned:
    """The image's size as displayed and as it will be stored; read from the header only."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(0x0112) in TRANSPOSED:
                width, height = height, width
    except Image.DecompressionBombError as err:
        raise SdakdError(f"{path} is too large to decode safely ({err}); downscale or remove it") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise SdakdError(f"{path} is not a readable image ({err}); fix or remove it") from None
    size = (width, height)
    if max_side is not None and max(size) > max_side:
        factor = max_side / max(size)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
    if min(size) < min_side:
        stored = "" if size == (width, height) else f", {size[0]}x{size[1]} after downscaling to max_side={max_side}"
        raise SdakdError(
            f"{path} is {width}x{height}{stored}: smaller than min_side={min_side} "
            f"(the GT crop); every side must be >= {min_side}"
        )
    return Planned(path, split, (width, height), size)


def _plan(items: list[Planned]) -> list[Planned]:
    """Give each image its pixel file and offset: files per split, cut at about FILE_BYTES."""
    planned, file, used, split = [], -1, FILE_BYTES, None
    for item in items:
        nbytes = item.size[0] * item.size[1] * 3
        if item.split != split or used + nbytes > FILE_BYTES and used:
            file, used, split = file + 1, 0, item.split
        planned.append(Planned(item.path, item.split, item.source_size, item.size, file, used))
        used += nbytes
    return planned


def _allocate(staging: Path, plan: list[Planned]) -> list[tuple[str, str]]:
    """Create every pixel file at its final size; return (file name, split) per file index."""
    names: list[tuple[str, str]] = []
    ends: dict[int, int] = {}
    for p in plan:
        if p.file == len(names):
            count = sum(split == p.split for _, split in names)
            names.append((f"{p.split}-{count:05d}.u8", p.split))
        ends[p.file] = p.offset + p.size[0] * p.size[1] * 3
    for k, (name, _) in enumerate(names):
        with open(staging / name, "wb") as f:
            f.truncate(ends[k])
    return names


def _decode_all(
    staging: Path, names: list[tuple[str, str]], plan: list[Planned], jobs: int, progress: TextIO | None
) -> list[str]:
    """Decode every image into its place; the sha256 of each image's pixels, in plan order."""
    tasks = [(str(p.path), str(staging / names[p.file][0]), p.offset, p.size) for p in plan]
    bar = Progress(len(tasks), progress)
    digests: list[str] = [""] * len(tasks)
    if jobs == 1 or len(tasks) == 1:
        for k, digest in map(_decode_into, enumerate(tasks)):
            digests[k] = _checked(digest)
            bar.advance()
        return digests
    # fork: the workers need only PIL and numpy, and start at once
    with multiprocessing.get_context("fork").Pool(min(jobs, len(tasks))) as pool:
        for k, digest in pool.imap_unordered(_decode_into, enumerate(tasks)):
            digests[k] = _checked(digest)
            bar.advance()
    return digests


def _checked(result: str) -> str:
    if result.startswith("error:"):
        raise SdakdError(result.removeprefix("error:"))
    return result


def _decode_into(item: tuple[int, tuple[str, str, int, tuple[int, int]]]) -> tuple[int, str]:
    """Decode image k, write its (3, H, W) pixels at `offset` of its file; (k, its sha256 or 'error:<why>')."""
    k, (source, target, offset, size) = item
    try:
        with Image.open(source) as img:
            rgb = ImageOps.exif_transpose(img).convert("RGB")  # drops alpha, expands gray
    except Image.DecompressionBombError as err:
        return k, f"error:{source} is too large to decode safely ({err}); downscale or remove it"
    except (OSError, SyntaxError, ValueError) as err:  # PIL's truncated, corrupt or oversized files
        return k, f"error:{source} is not a readable image ({err}); fix or remove it"
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    pixels = np.ascontiguousarray(np.asarray(rgb).transpose(2, 0, 1)).tobytes()  # planar: see store.py
    fd = os.open(target, os.O_WRONLY)
    try:
        os.pwrite(fd, pixels, offset)
    finally:
        os.close(fd)
    return k, hashlib.sha256(pixels).hexdigest()


def _index(plan: list[Planned], digests: list[str], split: str) -> dict[str, list]:
    rows = [(p, d) for p, d in zip(plan, digests) if p.split == split]
    return {
        "name": [p.path.stem for p, _ in rows],
        "file": [p.file for p, _ in rows],
        "offset": [p.offset for p, _ in rows],
        "height": [p.size[1] for p, _ in rows],
        "width": [p.size[0] for p, _ in rows],
        "sha256": [d for _, d in rows],
    }


def _check_disjoint(plan: list[Planned], digests: list[str]) -> None:
    """The same image (by the sha256 of its stored pixels) in two splits would leak the test into training."""
    seen: dict[str, Planned] = {}
    for p, digest in zip(plan, digests):
        other = seen.setdefault(digest, p)
        if other.split != p.split:
            raise SdakdError(
                f"{other.path} ({other.split}) and {p.path} ({p.split}) are the same image: a split "
                "must not share images with another; remove one of them"
            )


def _source_label(images_dir: str | Path | None) -> str:
    return "scikit-image bundled photos" if images_dir is None else str(Path(images_dir).resolve())


def _require_int(field: str, value: object, lowest: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
        raise SdakdError(f"{field}={value!r} is invalid; allowed: an integer >= {lowest}")

"""Image folder -> Parquet shards + manifest.json, and the checked way back to decoded images."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from sdakd.data.replace import check_replaceable, swap_in
from sdakd.data.samples import HELD_OUT_PHOTOS, sample_photo_paths
from sdakd.errors import SdakdError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
DATASET_FILE = re.compile(r"manifest\.json(\.tmp)?|(train|val|test)-\d+\.parquet")  # what a dataset folder holds
FORMAT = "sdakd-shards/1"
SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("split", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("png", pa.binary()),
        ("sha256", pa.string()),
    ]
)


def build_dataset(
    out_dir: str | Path,
    images_dir: str | Path | None = None,
    val_count: int = 2,
    test_count: int | None = None,
    max_side: int | None = 512,
    min_side: int = 0,
    rows_per_shard: int = 256,
) -> Path:
    """Write `{train,val,test}-*.parquet` and `manifest.json` into `out_dir`; return the manifest path.

    Images are sorted by name; the last `test_count` (default 2) form the test split and the `val_count` before
    them the validation split, so the splits depend only on the names. The bundled photos (no `images_dir`) keep
    their fixed order and take scikit-image's held-out photos as the test split. No image (by content) may sit in
    two splits. Images whose longest side exceeds `max_side` are downscaled (bicubic) to keep CPU work small;
    `min_side` (the GT crop) is checked on the stored size. The dataset is written into a folder beside `out_dir`
    and swapped in only when complete: a failed build leaves the dataset already there as it was.
    """
    out = Path(out_dir)
    _require_int("val_count", val_count, 0)
    if test_count is not None:
        _require_int("test_count", test_count, 0)
    _require_int("min_side", min_side, 0)
    _require_int("rows_per_shard", rows_per_shard, 1)
    if max_side is not None:
        _require_int("max_side", max_side, 1)
    sources = _split_sources(images_dir, val_count, test_count)
    if max_side is not None and min_side > max_side:
        raise SdakdError(f"min_side={min_side} exceeds max_side={max_side}; allowed: min_side <= max_side")
    check_replaceable(out, DATASET_FILE)
    sizes = [_stored_size(path, max_side, min_side) for path, _ in sources]

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        shards, entries, files = [], [], {}
        for split in SPLITS:
            items = [(path, size) for (path, s), size in zip(sources, sizes) if s == split]
            for k, start in enumerate(range(0, len(items), rows_per_shard)):
                # encode one shard at a time: memory stays bounded by rows_per_shard images
                rows = [_row(path, size, split) for path, size in items[start : start + rows_per_shard]]
                path = staging / f"{split}-{k:05d}.parquet"
                pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
                shards.append({"file": path.name, "split": split, "rows": len(rows), "sha256": _file_sha256(path)})
                entries += [(split, row["name"], row["sha256"]) for row in rows]
                files |= {(split, row["name"]): p for row, (p, _) in zip(rows, items[start:])}
        _check_disjoint(entries, files)
        manifest = {
            "format": FORMAT,
            "source": _source_label(images_dir),
            "max_side": max_side,
            "counts": {split: sum(s == split for _, s in sources) for split in SPLITS},
            "shards": shards,
            "checksum": _content_checksum(entries),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
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
        sources, held_out = _image_files(images_dir), []
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


def _check_disjoint(entries: list[tuple[str, str, str]], files: dict[tuple[str, str], Path]) -> None:
    """The same image (by the sha256 of its stored pixels) in two splits would leak the test into training."""
    seen: dict[str, tuple[str, str]] = {}
    for split, name, digest in entries:
        other = seen.setdefault(digest, (split, name))
        if other[0] != split:
            raise SdakdError(
                f"{files[other]} ({other[0]}) and {files[(split, name)]} ({split}) are the same image: a split "
                "must not share images with another; remove one of them"
            )


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of `data_dir`, after checking every shard's sha256, row counts and the content checksum."""
    root = Path(data_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise SdakdError(f"{path} not found: build the dataset first (sdakd data build --out {root})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SdakdError(f"{path} is not valid JSON ({err}); rebuild the dataset") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SdakdError(f"{path}: field 'format' must be {FORMAT!r}; rebuild the dataset")
    for field, kind in (("shards", list), ("counts", dict), ("checksum", str)):
        if not isinstance(manifest.get(field), kind):
            raise SdakdError(f"{path}: field {field!r} is missing or not a {kind.__name__}; rebuild the dataset")

    entries = []
    counts = dict.fromkeys(SPLITS, 0)
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict) or shard.get("split") not in SPLITS:
            raise SdakdError(f"{path}: shards[{i}] needs a 'split' out of {', '.join(SPLITS)}; rebuild the dataset")
        shard_path = root / str(shard.get("file"))
        if not shard_path.is_file():
            raise SdakdError(f"{path}: shards[{i}].file {shard_path.name} is missing; rebuild the dataset")
        if _file_sha256(shard_path) != shard.get("sha256"):
            raise SdakdError(
                f"{shard_path}: sha256 differs from shards[{i}].sha256 in {path}; the shard was modified or "
                "corrupted, rebuild the dataset"
            )
        table = pq.read_table(shard_path, columns=["split", "name", "sha256"])
        splits, names, hashes = (table.column(c).to_pylist() for c in ("split", "name", "sha256"))
        if table.num_rows != shard.get("rows") or set(splits) - {shard["split"]}:
            raise SdakdError(f"{path}: shards[{i}] rows or split do not match {shard_path.name}; rebuild")
        counts[shard["split"]] += table.num_rows
        entries += zip(splits, names, hashes)
    if counts != dict.fromkeys(SPLITS, 0) | manifest["counts"]:  # manifests from before the test split lack it
        raise SdakdError(f"{path}: field 'counts' {manifest['counts']} does not match the shards ({counts})")
    if _content_checksum(entries) != manifest["checksum"]:
        raise SdakdError(f"{path}: field 'checksum' does not match the shard contents; rebuild the dataset")
    return manifest


def read_split(data_dir: str | Path, split: str) -> list[tuple[str, torch.Tensor]]:
    """(name, uint8 image (3, H, W)) for every image of `split`, sorted by name, each checked against its sha256."""
    if split not in SPLITS:
        raise SdakdError(f"split {split!r} is unknown; allowed: {', '.join(SPLITS)}")
    root = Path(data_dir)
    images = []
    for shard in load_manifest(root)["shards"]:
        if shard["split"] != split:
            continue
        table = pq.read_table(root / shard["file"], columns=["name", "png", "sha256"]).to_pylist()
        for row in table:
            if hashlib.sha256(row["png"]).hexdigest() != row["sha256"]:
                raise SdakdError(f"{root / shard['file']}: image {row['name']!r} fails its sha256; rebuild")
            with Image.open(io.BytesIO(row["png"])) as img:
                array = np.array(img.convert("RGB"))
            images.append((row["name"], torch.from_numpy(array).permute(2, 0, 1).contiguous()))
    return sorted(images, key=lambda item: item[0])


def _image_files(images_dir: str | Path) -> list[Path]:
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


def _source_label(images_dir: str | Path | None) -> str:
    return "scikit-image bundled photos" if images_dir is None else str(Path(images_dir).resolve())


def _require_int(field: str, value: object, lowest: int) -> None:
    if not isinstance(value, int) or value < lowest:
        raise SdakdError(f"{field}={value!r} is invalid; allowed: an integer >= {lowest}")


def _stored_size(path: Path, max_side: int | None, min_side: int) -> tuple[int, int]:
    """(width, height) after the optional downscale; read from the header only."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except OSError as err:
        raise SdakdError(f"{path} is not a readable image ({err})") from None
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
    return size


def _row(path: Path, size: tuple[int, int], split: str) -> dict[str, Any]:
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")  # decodes the whole image (drops alpha, expands gray)
    except (OSError, SyntaxError, ValueError) as err:  # PIL's truncated, corrupt or oversized files
        raise SdakdError(f"{path} is not a readable image ({err}); fix or remove it") from None
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=1)  # 3x faster than the default for ~8% more bytes
    png = buffer.getvalue()
    return {
        "name": path.stem,
        "split": split,
        "height": size[1],
        "width": size[0],
        "png": png,
        "sha256": hashlib.sha256(png).hexdigest(),
    }


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_checksum(entries: Iterable[tuple[str, str, str]]) -> str:
    """sha256 over (split, name, image sha256): independent of shard layout and Parquet encoding."""
    lines = sorted("\t".join(entry) for entry in entries)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()

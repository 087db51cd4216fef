"""The dataset store: images decoded once at build time into raw uint8 files that every rank memory-maps.

A dataset folder holds `manifest.json` and `{split}-NNNNN.u8` pixel files: each image (3, H, W) uint8, planar
and row-major, at an offset the manifest's index names. Planar, because a crop is then rows of contiguous bytes
per channel, copied as they are into the (3, H, W) tensors training uses (an interleaved store would need a
transposing copy per crop: measured 1.5x slower per patch). Ranks read crops straight from the mapping, so what they read lives in the
page cache, shared by every process on a node, and a rank's private memory does not grow with the dataset.

Integrity: every pixel file has a sha256 in the manifest. It is checked once per node and dataset, not in every rank:
the first process to open the dataset hashes the files under a lock and leaves a stamp (each file's size, mtime and
inode) in the node's temporary folder; later processes compare the stamp with `stat` and hash only what changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from sdakd.errors import SdakdError

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
FORMAT = "sdakd-store/2"
INDEX_FIELDS = ("name", "file", "offset", "height", "width", "sha256")  # the columns of manifest["images"][split]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def content_checksum(entries: Iterable[tuple[str, str, str]]) -> str:
    """sha256 over (split, name, pixel sha256): the dataset's identity, independent of how files are laid out."""
    lines = sorted("\t".join(entry) for entry in entries)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest's JSON after checking its shape; no pixel file is read (see `load_manifest`)."""
    root = Path(data_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise SdakdError(f"{path} not found: build the dataset first (sdakd data build --images DIR --out {root})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SdakdError(f"{path} is not valid JSON ({err}); rebuild the dataset") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        older = " (an earlier sdakd's Parquet dataset)" if found == "sdakd-shards/1" else ""
        raise SdakdError(
            f"{path}: field 'format' is {str(found)[:40]!r}{older}, this sdakd reads {FORMAT!r}; rebuild it with "
            f"sdakd data build --images SOURCE --out {root}"
        )
    for field, kind in (("files", list), ("images", dict), ("counts", dict), ("checksum", str)):
        if not isinstance(manifest.get(field), kind):
            raise SdakdError(f"{path}: field {field!r} is missing or not a {kind.__name__}; rebuild the dataset")
    for split, index in manifest["images"].items():
        if split not in SPLITS or not isinstance(index, dict) or set(index) != set(INDEX_FIELDS):
            raise SdakdError(f"{path}: images.{split} needs the columns {', '.join(INDEX_FIELDS)}; rebuild")
        if len({len(column) for column in index.values()}) != 1 or len(index["name"]) != manifest["counts"].get(split):
            raise SdakdError(f"{path}: images.{split} columns disagree with counts.{split}; rebuild the dataset")
    entries = [(s, n, h) for s, ix in manifest["images"].items() for n, h in zip(ix["name"], ix["sha256"])]
    if content_checksum(entries) != manifest["checksum"]:
        raise SdakdError(f"{path}: field 'checksum' does not match the image index; rebuild the dataset")
    return manifest


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of `data_dir`, its pixel files checked against their sha256 (once per node, see the module)."""
    root = Path(data_dir)
    manifest = read_manifest(root)
    problems = stale_files(root, manifest)
    if problems:
        i, problem = next(iter(problems.items()))
        raise SdakdError(f"{root / MANIFEST}: files[{i}]: {problem}; rebuild (or fetch) the dataset")
    return manifest


def stale_files(root: Path, manifest: dict[str, Any]) -> dict[int, str]:
    """{files index: what is wrong} for pixel files missing or differing from the manifest; hashes only the files
    that are new to this node or changed since their stamp, and stamps the good ones."""
    stamp = Path(tempfile.gettempdir()) / "sdakd-verified" / (
        hashlib.sha256(f"{root.resolve()}\0{manifest['checksum']}".encode()).hexdigest()[:24] + ".json"
    )
    problems, good = {}, {}
    with locked(stamp):
        known = json.loads(stamp.read_text()) if stamp.is_file() else {}
        for i, entry in enumerate(manifest["files"]):
            path = root / str(entry.get("file"))
            if not path.is_file():
                problems[i] = f"{path.name} is missing"
                continue
            st = path.stat()
            seen = [st.st_size, st.st_mtime_ns, st.st_ino]
            if known.get(path.name) != seen and (
                st.st_size != entry.get("bytes") or file_sha256(path) != entry.get("sha256")
            ):
                problems[i] = f"{path} differs from its size or sha256 (modified or corrupted)"
                continue
            good[path.name] = seen
        if good != known:  # most starts find the stamp as it was: nothing to write
            stamp.write_text(json.dumps(good))
    return problems


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`.lock: processes on one node wait for each other here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SplitImages:
    """One split's images, memory-mapped: `names`, `heights`, `widths`, `crop(i, top, left, size)`, `image(i)`.

    The mappings open on first use, in the process that reads (a loader process too): pickling sends the index only.
    """

    def __init__(self, data_dir: str | Path, split: str) -> None:
        if split not in SPLITS:
            raise SdakdError(f"split {split!r} is unknown; allowed: {', '.join(SPLITS)}")
        self.root = Path(data_dir)
        manifest = load_manifest(self.root)
        index = manifest["images"].get(split, dict.fromkeys(INDEX_FIELDS, []))
        order = sorted(range(len(index["name"])), key=lambda k: index["name"][k])
        self.names = [index["name"][k] for k in order]
        self.sha256 = [index["sha256"][k] for k in order]
        self.files = [entry["file"] for entry in manifest["files"]]
        self.file_of = np.array([index["file"][k] for k in order], dtype=np.int32)
        self.offsets = np.array([index["offset"][k] for k in order], dtype=np.int64)
        self.heights = np.array([index["height"][k] for k in order], dtype=np.int64)
        self.widths = np.array([index["width"][k] for k in order], dtype=np.int64)
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_maps": {}}

    def array(self, i: int) -> np.ndarray:
        """Image i as a read-only (3, H, W) uint8 view of its mapping."""
        f = int(self.file_of[i])
        if f not in self._maps:
            self._maps[f] = np.memmap(self.root / self.files[f], dtype=np.uint8, mode="r")
        h, w = int(self.heights[i]), int(self.widths[i])
        start = int(self.offsets[i])
        return self._maps[f][start : start + h * w * 3].reshape(3, h, w)

    def crop(self, i: int, top: int, left: int, size: int) -> torch.Tensor:
        """(3, size, size) uint8, copied out of the mapping (only these pixels are read)."""
        # a copy (never a view of the read-only map), contiguous as the previous store's crops were
        return torch.from_numpy(np.array(self.array(i)[:, top : top + size, left : left + size], order="C"))

    def image(self, i: int, check: bool = True) -> torch.Tensor:
        """The whole image (3, H, W) uint8, contiguous; checked against its own sha256 when `check`."""
        pixels = np.array(self.array(i))
        if check and hashlib.sha256(pixels.tobytes()).hexdigest() != self.sha256[i]:
            raise SdakdError(f"{self.root}: image {self.names[i]!r} fails its sha256; rebuild the dataset")
        return torch.from_numpy(pixels)


def read_split(data_dir: str | Path, split: str) -> list[tuple[str, torch.Tensor]]:
    """(name, uint8 image (3, H, W)) for every image of `split`, sorted by name, each checked against its sha256.
    For the small evaluation splits: training reads crops through `SplitImages`."""
    images = SplitImages(data_dir, split)
    return [(images.names[i], images.image(i)) for i in range(len(images))]

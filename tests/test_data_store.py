"""Paper-scale data: full resolution by default, memory-mapped ranks with bounded private memory, the same batches
as the previous (Parquet, decoded-in-memory) store, builds of large folders, and datasets at an S3 URI copied once
per node from a real S3-protocol server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdakd.cli import main
from sdakd.config.load import load_config
from sdakd.data.dataset import ensure_dataset
from sdakd.data import StepBatches, build_dataset, load_manifest, read_split
from sdakd.data.remote import fetch_dataset
from sdakd.errors import SdakdError

PLATFORM = str(Path(__file__).resolve().parents[1] / "platform")


def smooth_photos(folder: Path, count: int, size: tuple[int, int], seed: int = 7) -> Path:
    """Deterministic photo-like PNGs (gradients plus noise), each different."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    for k in range(count):
        base = np.stack([(x * (k + 1)) % 256, (y * 3 + k) % 256, (x + y + 7 * k) % 256], -1)
        noise = rng.integers(0, 40, (h, w, 3))
        Image.fromarray((base + noise).astype(np.uint8)).save(folder / f"img{k:04d}.png", compress_level=1)
    return folder


# ---------------------------------------------------------------- full resolution, --max-side


def test_full_resolution_is_kept_and_a_crop_over_512_is_served(tmp_path: Path, capsys) -> None:
    images = smooth_photos(tmp_path / "img", 4, (1500, 1000))
    assert main(["data", "build", "--images", str(images), "--out", str(tmp_path / "ds"), "--val", "1",
                 "--test", "1", "--jobs", "2"]) == 0
    out = capsys.readouterr()
    assert "downscaled" not in out.out and "wrote" in out.out
    assert "decoded 4/4 images" in out.err and "images/s" in out.err and "ETA" in out.err
    assert [tuple(img.shape) for _, img in read_split(tmp_path / "ds", "val")] == [(3, 1000, 1500)]
    batch = StepBatches(tmp_path / "ds", batch_size=2, gt_size=768, scale=4)[0]
    assert batch["hr"].shape == (2, 3, 768, 768) and batch["lr"].shape == (2, 3, 192, 192)


def test_max_side_prints_what_it_changed(tmp_path: Path, capsys) -> None:
    images = smooth_photos(tmp_path / "img", 3, (300, 200))
    Image.new("RGB", (900, 600)).save(images / "big.png")
    assert main(["data", "build", "--images", str(images), "--out", str(tmp_path / "ds"), "--val", "1",
                 "--test", "0", "--max-side", "450", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "max_side=450: downscaled 1 of 4 images (longest side), e.g. big.png 900x600 -> 450x300" in printed
    assert dict(read_split(tmp_path / "ds", "train"))["big"].shape == (3, 300, 450)
    assert main(["data", "build", "--out", str(tmp_path / "bundled"), "--jobs", "1"]) == 0
    assert "bundled demo photos are stored with their longest side capped at 512 px" in capsys.readouterr().out


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    images = smooth_photos(tmp_path / "img", 2, (120, 80))
    upright = np.asarray(Image.open(images / "img0000.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displayed rotated 90 degrees clockwise
    Image.fromarray(np.rot90(upright, 1).copy()).save(images / "img0000.jpg", quality=100, subsampling=0, exif=exif)
    (images / "img0000.png").rename(images / "other.png")
    build_dataset(tmp_path / "ds", images, val_count=1, test_count=0)
    stored = dict(read_split(tmp_path / "ds", "train"))["img0000"].permute(1, 2, 0).numpy()
    assert stored.shape == upright.shape  # 80x120 as displayed, not 120x80 as stored
    assert np.abs(stored.astype(int) - upright).mean() < 6  # the same picture (JPEG-compressed)


def test_a_decompression_bomb_is_one_error(tmp_path: Path, monkeypatch, capsys) -> None:
    images = smooth_photos(tmp_path / "img", 3, (200, 200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200x200 is then over twice the limit
    assert main(["data", "build", "--images", str(images), "--out", str(tmp_path / "ds"), "--jobs", "1",
                 "--val", "1", "--test", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "img0000.png is too large to decode safely" in err
    assert "Traceback" not in err and not (tmp_path / "ds").exists()


def test_a_folder_holding_only_a_foreign_manifest_json_is_not_replaced(tmp_path: Path) -> None:
    images = smooth_photos(tmp_path / "img", 3, (80, 80))
    out = tmp_path / "notes"
    out.mkdir()
    (out / "manifest.json").write_text("my shipping manifest, not a dataset")
    with pytest.raises(SdakdError, match=r"holds files that are not part of a dataset \(manifest.json\)"):
        build_dataset(out, images, val_count=1, test_count=0)
    assert (out / "manifest.json").read_text() == "my shipping manifest, not a dataset"
    build_dataset(tmp_path / "ds", images, val_count=1, test_count=0)
    build_dataset(tmp_path / "ds", images, val_count=1, test_count=1)  # a dataset of ours is rebuilt in place
    assert load_manifest(tmp_path / "ds")["counts"] == {"train": 1, "val": 1, "test": 1}


# ---------------------------------------------------------------- the same batches as before

# sha256[:16] of StepBatches.clean(step)["hr"] (batch 3, GT 64, seed 11) over smooth_photos(5, ...) sizes below,
# computed with the previous store (Parquet shards decoded into each rank's memory, commit 30bc196)
PREVIOUS_STORE = {
    (0, 1, 0): "e3f013e90cc4dc19", (0, 1, 9): "609587011f7e4164",
    (0, 2, 0): "acc14d5b978b4359", (0, 2, 9): "215c59b59bbb1d67",
    (1, 2, 0): "98dfab2ca0739c74", (1, 2, 9): "9126e9d03831fdbc",
}


def golden_photos(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for k in range(5):
        h, w = 96 + 8 * k, 120 - 4 * k
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * (k + 1)) % 256, (y * 3 + k) % 256, (x + y) % 256], -1)
        Image.fromarray((base + rng.integers(0, 40, (h, w, 3))).astype(np.uint8)).save(folder / f"img{k}.png")
    return folder


@pytest.mark.parametrize("degradation", ["bicubic", "second_order"])
def test_the_same_batches_as_the_previous_store(tmp_path: Path, degradation: str) -> None:
    build_dataset(tmp_path / "ds", golden_photos(tmp_path / "img"), val_count=1, test_count=1)
    for (rank, world, step), digest in PREVIOUS_STORE.items():
        batches = StepBatches(tmp_path / "ds", batch_size=3, gt_size=64, scale=4, degradation=degradation, seed=11,
                              rank=rank, world_size=world)
        assert hashlib.sha256(batches.clean(step)["hr"].numpy().tobytes()).hexdigest()[:16] == digest


# ---------------------------------------------------------------- memory


RANK = textwrap.dedent("""
    import json, sys
    from sdakd.data import StepBatches

    def anonymous_kib():
        return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon")).split()[1])

    before = anonymous_kib()
    batches = StepBatches(sys.argv[1], batch_size=4, gt_size=128, scale=4)
    for step in range(int(sys.argv[2])):
        batches[step]
    print(json.dumps({"grew_mib": (anonymous_kib() - before) / 1024}))
""")


def rank_growth(root: Path, steps: int) -> float:
    env = os.environ | {"PYTHONPATH": PLATFORM, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", RANK, str(root), str(steps)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.splitlines()[-1])["grew_mib"]


def test_a_ranks_private_memory_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    """12 and 48 images of 1200x900 (39 and 155 MB decoded): the previous store held all of them in every rank."""
    small, large = tmp_path / "small", tmp_path / "large"
    build_dataset(small, smooth_photos(tmp_path / "img12", 14, (1200, 900)), val_count=1, test_count=1, jobs=2)
    build_dataset(large, smooth_photos(tmp_path / "img48", 50, (1200, 900)), val_count=1, test_count=1, jobs=2)
    grown = {name: rank_growth(root, steps=40) for name, root in (("small", small), ("large", large))}
    # 40 steps x 4 crops touch most images of both; what grows is the crops and torch's first-call buffers only
    assert grown["small"] < 40 and grown["large"] < 40, grown
    assert abs(grown["large"] - grown["small"]) < 15, grown


# ---------------------------------------------------------------- large folders


def test_a_thousand_image_folder_builds_in_bounded_memory(tmp_path: Path) -> None:
    images = smooth_photos(tmp_path / "img", 1000, (96, 72))
    script = textwrap.dedent("""
        import resource, sys
        from sdakd.data import build_dataset
        peak = lambda who: resource.getrusage(who).ru_maxrss // 1024  # MiB
        before = peak(resource.RUSAGE_SELF)  # torch and the rest imported
        build_dataset(sys.argv[1], sys.argv[2], val_count=10, test_count=10, jobs=2)
        print(peak(resource.RUSAGE_SELF) - before, peak(resource.RUSAGE_CHILDREN))
    """)
    env = os.environ | {"PYTHONPATH": PLATFORM}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ds"), str(images)], env=env,
                         capture_output=True, text=True, check=True)
    driver_growth_mib, worker_peak_mib = map(int, out.stdout.split())
    manifest = load_manifest(tmp_path / "ds")
    assert manifest["counts"] == {"train": 980, "val": 10, "test": 10}
    # the driver holds the plan and the digests, a worker one image (forked: its peak counts the driver's pages)
    assert driver_growth_mib < 100 and worker_peak_mib < 1500, (driver_growth_mib, worker_peak_mib)


# ---------------------------------------------------------------- a dataset at an S3 URI


@pytest.fixture()
def s3(monkeypatch: pytest.MonkeyPatch):
    """A real S3-protocol server (moto's, over HTTP on 127.0.0.1) and the AWS variables that point clients at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    server.stop()


def upload(local: Path, bucket_path: str) -> None:
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    fs.create_dir(bucket_path.split("/")[0])
    for path in local.iterdir():
        with fs.open_output_stream(f"{bucket_path}/{path.name}") as sink:
            sink.write(path.read_bytes())


FETCH = textwrap.dedent("""
    import logging, sys
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from sdakd.data.remote import fetch_dataset
    print("local", fetch_dataset(sys.argv[1], Path(sys.argv[2])))
""")


def test_a_dataset_at_an_s3_uri_is_copied_once_per_node_and_checked(tmp_path: Path, s3: dict) -> None:
    build_dataset(tmp_path / "ds", smooth_photos(tmp_path / "img", 5, (160, 120)), val_count=1, test_count=1)
    upload(tmp_path / "ds", "bucket/datasets/ds")
    cache = tmp_path / "node-cache"
    # two ranks of one node start at once: one copies, the other waits on the lock and finds the copy complete
    env = os.environ | {"PYTHONPATH": PLATFORM}
    ranks = [subprocess.Popen([sys.executable, "-c", FETCH, "s3://bucket/datasets/ds", str(cache)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], logs
    assert sum("copying 3 of 3 dataset files" in log for log in logs) == 1, logs
    folders = {line.split()[1] for log in logs for line in log.splitlines() if line.startswith("local ")}
    assert len(folders) == 1
    local = Path(folders.pop())
    assert load_manifest(local)["checksum"] == load_manifest(tmp_path / "ds")["checksum"]
    assert [n for n, _ in read_split(local, "train")] == ["img0000", "img0001", "img0002"]

    pixels = local / "train-00000.u8"
    damaged = bytearray(pixels.read_bytes())
    damaged[100] ^= 0xFF
    pixels.write_bytes(bytes(damaged))  # a corrupted cached file: detected and fetched again, alone
    assert fetch_dataset("s3://bucket/datasets/ds", cache) == local
    assert pixels.read_bytes() == (tmp_path / "ds" / "train-00000.u8").read_bytes()

    # a config naming the URI trains from the node's copy
    cfg = load_config("tiny", overrides=["data.root=s3://bucket/datasets/ds", f"run.data_cache={cache}"])
    assert ensure_dataset(cfg).root == local


def test_an_s3_uri_without_a_dataset_is_one_error(tmp_path: Path, s3: dict) -> None:
    upload(smooth_photos(tmp_path / "img", 1, (32, 32)), "bucket/photos")
    with pytest.raises(SdakdError, match=r"s3://bucket/nothing: cannot read manifest.json"):
        fetch_dataset("s3://bucket/nothing", tmp_path / "cache")

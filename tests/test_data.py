"""The memory-mapped store + manifest, degradations, and the step-indexed loader."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdakd.data import (
    DEGRADATIONS,
    StepBatches,
    batch_loader,
    bicubic_down,
    bicubic_up,
    build_dataset,
    load_manifest,
    read_split,
    second_order,
    val_pairs,
)
from sdakd.errors import SdakdError


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled scikit-image photos, built once for the module."""
    out = tmp_path_factory.mktemp("photos")
    build_dataset(out)
    return out


def write_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


# ---------------------------------------------------------------- store + manifest


def test_build_dataset_writes_pixel_files_and_a_verified_manifest(photos: Path) -> None:
    manifest = load_manifest(photos)
    assert manifest["counts"] == {"train": 7, "val": 2, "test": 6}
    assert [f["file"] for f in manifest["files"]] == ["train-00000.u8", "val-00000.u8", "test-00000.u8"]
    train_bytes = sum(h * w * 3 for h, w in zip(manifest["images"]["train"]["height"], manifest["images"]["train"]["width"]))
    assert (photos / "train-00000.u8").stat().st_size == train_bytes  # raw pixels, nothing else
    assert json.loads((photos / "manifest.json").read_text())["checksum"] == manifest["checksum"]
    train, val, test = (read_split(photos, split) for split in ("train", "val", "test"))
    assert [name for name, _ in val] == ["chelsea", "coffee"]  # the last two of SAMPLE_PHOTOS
    assert [name for name, _ in test] == ["brick", "camera", "coins", "grass", "gravel", "moon"]  # held out
    assert "astronaut" in [name for name, _ in train]
    for _, img in train + val + test:
        assert img.dtype == torch.uint8 and img.shape[0] == 3 and max(img.shape[1:]) <= 512


def test_the_three_splits_are_disjoint_by_image_content(photos: Path) -> None:
    digests = {
        split: {hashlib.sha256(img.numpy().tobytes()).hexdigest() for _, img in read_split(photos, split)}
        for split in ("train", "val", "test")
    }
    assert [len(d) for d in digests.values()] == [7, 2, 6]
    assert not (digests["train"] & digests["val"] or digests["train"] & digests["test"] or digests["val"] & digests["test"])


def test_split_sizes_of_a_folder_and_a_copy_across_splits(tmp_path: Path) -> None:
    names = {f"{c}.png": (40, 40) for c in "abcdef"}
    images = write_images(tmp_path / "img", names)
    build_dataset(tmp_path / "out", images_dir=images, val_count=1, test_count=2)
    splits = {s: [n for n, _ in read_split(tmp_path / "out", s)] for s in ("train", "val", "test")}
    assert splits == {"train": ["a", "b", "c"], "val": ["d"], "test": ["e", "f"]}  # by name: ..., val, test
    shutil.copy(images / "a.png", images / "f.png")  # a test image that is a training image under another name
    with pytest.raises(SdakdError, match=r"a\.png \(train\) and .*f\.png \(test\) are the same image"):
        build_dataset(tmp_path / "again", images_dir=images, val_count=1, test_count=2)
    with pytest.raises(SdakdError, match="val_count=3 and test_count=3 leave no training image"):
        build_dataset(tmp_path / "again", images_dir=images, val_count=3, test_count=3)


def test_rebuilding_gives_the_same_content_checksum(photos: Path, tmp_path: Path) -> None:
    build_dataset(tmp_path / "again")
    assert load_manifest(tmp_path / "again")["checksum"] == load_manifest(photos)["checksum"]


def test_a_tampered_pixel_file_is_refused(photos: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(photos, tmp_path / "copy")
    load_manifest(copy)  # verified and stamped on this node
    pixels = copy / "train-00000.u8"
    data = bytearray(pixels.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pixels.write_bytes(bytes(data))  # a new mtime: the stamp no longer vouches for it
    with pytest.raises(SdakdError, match=r"train-00000\.u8 differs from its size or sha256"):
        load_manifest(copy)


def test_a_tampered_manifest_checksum_is_refused(photos: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(photos, tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["checksum"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SdakdError, match="'checksum' does not match"):
        load_manifest(copy)


def test_missing_or_corrupt_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SdakdError, match="manifest.json not found"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SdakdError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_bad_images_dir_is_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(SdakdError, match="does not exist"):
        build_dataset(out, images_dir=tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SdakdError, match="is not a folder"):
        build_dataset(out, images_dir=tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SdakdError, match="holds no images"):
        build_dataset(out, images_dir=tmp_path / "empty")
    assert not out.exists()


def test_an_image_smaller_than_the_crop_is_named(tmp_path: Path) -> None:
    images = write_images(tmp_path / "img", {"big.png": (80, 80), "tiny.png": (32, 20), "zz.png": (90, 90)})
    with pytest.raises(SdakdError, match=r"tiny\.png is 32x20.*min_side=64"):
        build_dataset(tmp_path / "out", images_dir=images, val_count=1, test_count=0, min_side=64)
    assert not (tmp_path / "out").exists()


def test_user_images_build_with_alpha_dropped(tmp_path: Path) -> None:
    images = write_images(tmp_path / "img", {"a.png": (80, 60), "b.jpg": (700, 300), "c.png": (90, 90)})
    Image.new("RGBA", (64, 64), (10, 20, 30, 40)).save(images / "d.png")
    build_dataset(tmp_path / "out", images_dir=images, val_count=1, test_count=0, max_side=256)
    train = dict(read_split(tmp_path / "out", "train"))
    assert sorted(train) == ["a", "b", "c"]
    assert tuple(train["b"].shape) == (3, 110, 256)  # longest side capped, aspect kept
    assert [name for name, _ in read_split(tmp_path / "out", "val")] == ["d"]


# ---------------------------------------------------------------- degradations


def test_bicubic_down_and_up_shapes() -> None:
    hr = torch.rand(3, 64, 48)
    assert bicubic_down(hr, 4).shape == (3, 16, 12)
    assert bicubic_down(hr.expand(2, 3, 64, 48), 2).shape == (2, 3, 32, 24)
    assert bicubic_up(bicubic_down(hr, 4), 4).shape == (3, 64, 48)
    flat = torch.full((3, 32, 32), 0.3)
    assert torch.allclose(bicubic_down(flat, 4), torch.full((3, 8, 8), 0.3), atol=1e-6)


def test_second_order_is_a_function_of_the_seed() -> None:
    hr = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    a = second_order(hr, 4, torch.Generator().manual_seed(7))
    b = second_order(hr, 4, torch.Generator().manual_seed(7))
    c = second_order(hr, 4, torch.Generator().manual_seed(8))
    assert a.shape == (3, 16, 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(a, (a * 255).round() / 255) and 0 <= a.min() and a.max() <= 1  # 8-bit LR
    assert second_order(hr.expand(2, 3, 64, 64), 4, torch.Generator().manual_seed(7)).shape == (2, 3, 16, 16)


def test_degradation_registry_names_the_choices() -> None:
    assert DEGRADATIONS.names() == ["bicubic", "second_order"]
    with pytest.raises(SdakdError, match="known: bicubic, second_order"):
        DEGRADATIONS.get("jpeg")


# ---------------------------------------------------------------- step-indexed batches


def test_batches_have_the_right_shapes(photos: Path) -> None:
    batch = StepBatches(photos, batch_size=3, gt_size=64, scale=4)[0]
    assert batch["hr"].shape == (3, 3, 64, 64) and batch["lr"].shape == (3, 3, 16, 16)
    assert batch["hr"].dtype == batch["lr"].dtype == torch.float32
    assert 0 <= batch["lr"].min() and batch["lr"].max() <= 1


@pytest.mark.parametrize("degradation", ["bicubic", "second_order"])
def test_a_batch_is_a_pure_function_of_seed_and_step(photos: Path, degradation: str) -> None:
    batches = StepBatches(photos, batch_size=2, gt_size=64, scale=4, degradation=degradation, seed=3)
    resumed = StepBatches(photos, batch_size=2, gt_size=64, scale=4, degradation=degradation, seed=3)
    for key in ("lr", "hr"):
        assert torch.equal(batches[5][key], resumed[5][key])
        assert not torch.equal(batches[5][key], batches[6][key])
    other_seed = StepBatches(photos, batch_size=2, gt_size=64, scale=4, degradation=degradation, seed=4)
    assert not torch.equal(batches[5]["hr"], other_seed[5]["hr"])


@pytest.mark.parametrize("degradation", ["bicubic", "second_order"])
def test_two_ranks_see_exactly_one_double_batch(photos: Path, degradation: str) -> None:
    common = dict(gt_size=64, scale=4, degradation=degradation, seed=11)
    whole = StepBatches(photos, batch_size=4, **common)[9]
    parts = [StepBatches(photos, batch_size=2, rank=r, world_size=2, **common)[9] for r in (0, 1)]
    for key in ("lr", "hr"):
        assert torch.equal(torch.cat([p[key] for p in parts]), whole[key])


def test_batch_loader_serves_the_requested_steps_in_order(photos: Path) -> None:
    batches = StepBatches(photos, batch_size=2, gt_size=32, scale=4)
    for workers in (0, 2):
        served = list(batch_loader(batches, start_step=4, num_steps=3, num_workers=workers))
        assert len(served) == 3
        for step, batch in zip(range(4, 7), served):
            assert torch.equal(batch["lr"], batches[step]["lr"]) and torch.equal(batch["hr"], batches[step]["hr"])


def test_a_train_image_smaller_than_gt_size_is_named(tmp_path: Path) -> None:
    images = write_images(tmp_path / "img", {"a.png": (80, 80), "b.png": (100, 70), "c.png": (90, 90)})
    build_dataset(tmp_path / "out", images_dir=images, val_count=1, test_count=0)
    with pytest.raises(SdakdError, match=r"smaller than gt_size=72: b \(100x70\)"):
        StepBatches(tmp_path / "out", batch_size=1, gt_size=72, scale=4)


def test_bad_loader_arguments_are_refused(photos: Path) -> None:
    with pytest.raises(SdakdError, match="not a multiple of scale"):
        StepBatches(photos, gt_size=66, scale=4)
    with pytest.raises(SdakdError, match="rank=2 is outside"):
        StepBatches(photos, gt_size=64, rank=2, world_size=2)
    with pytest.raises(SdakdError, match="unknown degradation"):
        StepBatches(photos, gt_size=64, degradation="blur")
    with pytest.raises(SdakdError, match="split 'holdout' is unknown"):
        StepBatches(photos, split="holdout", gt_size=64)


def test_val_pairs_are_scale_aligned_bicubic_pairs(photos: Path) -> None:
    pairs = val_pairs(photos, scale=4)
    assert [name for name, _, _ in pairs] == ["chelsea", "coffee"]
    for _, lr, hr in pairs:
        assert hr.shape[1] % 4 == 0 and hr.shape[2] % 4 == 0
        assert torch.equal(lr, bicubic_down(hr, 4))
    cropped = val_pairs(photos, scale=4, max_side=130)
    assert all(max(hr.shape[1:]) <= 130 and hr.shape[1] % 4 == 0 for _, _, hr in cropped)

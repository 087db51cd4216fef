"""Issue #19: no silent wrong run, no resume under another config, no dataset lost to a failed rebuild, and one
`error:` line (exit 2, no traceback, no torch advice) for every bad file a user can hand over."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import synthetic_batches
from sdakd.cli import main
from sdakd.config.identity import config_hash
from sdakd.config.load import load_config, read_yaml
from sdakd.data import load_manifest
from sdakd.data.dataset import ensure_dataset
from sdakd.engine import Engine
from sdakd.engine.checkpoint import load_checkpoint
from sdakd.errors import SdakdError
from sdakd.methods import METHODS
from sdakd.models.from_config import student_generator
from sdakd.run_folder import check_resumable
from sdakd.teacher.cache import pretrain_key

TINY = ["--preset", "tiny", "--set", "teacher.pretrain.iters=10", "--set", "teacher.pretrain.d_iters=2",
        "--set", "data.batch_size=2", "--set", "data.gt_size=32", "--set", "run.eval_max_images=2",
        "--set", "run.latency_repeats=1", "--set", "method=vanilla"]  # vanilla: no teacher to pretrain


def stages(n: int) -> list[str]:
    return [arg for s in ("s1", "s2", "s3") for arg in ("--set", f"stages.{s}.iters={n}")]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code, err, *needles):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("error: ") == 1, err
    assert "Traceback" not in err and "weights_only" not in err, err
    for needle in needles:
        assert needle in err, err


def write_photos(folder: Path, names: list[str], side: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / name)
    return folder


def poisoned(path: Path, marker: Path) -> Path:
    """A torch file whose unpickling would create `marker`: what weights_only=True must refuse."""

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"nets": Payload()}, path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4/4/4 vanilla run (checkpoints at every stage end) and the cache it built, shared by the module."""
    root = tmp_path_factory.mktemp("trained")
    folders = ["--set", f"run.cache_dir={root / 'cache'}", "--set", f"run.out_dir={root / 'run'}"]
    assert main(["train", *TINY, *stages(4), *folders]) == 0
    return root


# ---------------------------------------------------------------- 1. silent wrong runs


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "{}\n"])
def test_an_empty_config_file_is_refused(capsys, tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert_one_error(*run_cli(capsys, "train", "--config", path)[::2], f"config file {path} is empty")


def test_a_config_file_naming_another_preset_is_refused(capsys, tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("preset: realesrgan-x4\n")
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--config", path)
    assert_one_error(code, err, "preset 'tiny' was given", f"{path} names preset 'realesrgan-x4'")
    path.write_text("preset: tiny\nseed: 3\n")  # the same preset twice is one preset
    cfg = load_config("tiny", path)
    assert cfg.seed == 3 and cfg.stages == load_config("tiny").stages


def test_a_duplicate_yaml_key_is_refused_naming_key_and_lines(capsys, tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("preset: tiny\noptim:\n  lr_g: 1.0e-4\n  lr_d: 1.0e-4\n  lr_g: 2.0e-4\n")
    code, _, err = run_cli(capsys, "train", "--config", path)
    assert_one_error(code, err, str(path), "key 'lr_g' appears twice, on line 3 and line 5")
    grid = tmp_path / "grid.yaml"  # grids and search spaces go through the same reader
    grid.write_text("base: {preset: tiny}\ncells:\n  a: {}\ncells:\n  b: {}\n")
    with pytest.raises(SdakdError, match="grid file .*grid.yaml: key 'cells' appears twice, on line 2 and line 4"):
        read_yaml(grid, kind="ablation grid file")
    merged = tmp_path / "merge.yaml"  # a `<<:` merge overridden on purpose is no duplicate
    merged.write_text("a: &base {x: 1, y: 2}\nb:\n  <<: *base\n  x: 3\n")
    assert read_yaml(merged)["b"] == {"x": 3, "y": 2}


@pytest.mark.parametrize(
    "override", ["optim.lr_g=.inf", "loss.gan.weight=.inf", "optim.lr_d=.nan", "optim.betas=[.nan, 0.9]"]
)
def test_non_finite_numbers_are_refused(capsys, override):
    field = override.split("=")[0] + (".0" if "betas" in override else "")
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--set", override)
    assert_one_error(code, err, f"{field}: Input should be a finite number")


# ---------------------------------------------------------------- 2. provenance on resume


def test_resuming_under_other_result_fields_is_refused_listing_them(capsys, trained, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *TINY, *stages(2), "--set", "loss.gan.weight=0.2",
                           "--set", f"run.cache_dir={trained / 'cache'}", "--set", f"run.out_dir={out}",
                           "--resume", trained / "run" / "checkpoints" / "s2.pt")
    assert_one_error(code, err, "was trained under another config", "stages.s1.iters: checkpoint 4 vs config 2",
                     "stages.s2.iters: checkpoint 4 vs config 2", "stages.s3.iters: checkpoint 4 vs config 2",
                     "loss.gan.weight: checkpoint 0.005 vs config 0.2", "--warm-start")
    assert "run." not in err.split("differ:")[1], "where-and-how-often fields never block a resume"
    assert not out.exists(), "refused before anything was built"


def test_a_resume_may_change_where_and_how_often(capsys, trained, tmp_path):
    checkpoint = trained / "run" / "checkpoints" / "s2.pt"
    code, out, err = run_cli(capsys, "train", *TINY, *stages(4), "--set", f"run.cache_dir={trained / 'cache'}",
                             "--set", f"run.out_dir={tmp_path / 'run'}", "--set", "run.log_every=1",
                             "--resume", checkpoint)
    assert code == 0, err
    assert f"resumed from {checkpoint} at global step 8\n" in out
    assert "warm_start_from" not in json.loads((tmp_path / "run" / "metrics.json").read_text())["info"]


def test_a_warm_start_is_recorded_and_reports_the_true_step(capsys, trained, tmp_path):
    checkpoint = trained / "run" / "checkpoints" / "s2.pt"
    code, out, err = run_cli(capsys, "train", *TINY, *stages(2), "--set", f"run.cache_dir={trained / 'cache'}",
                             "--set", f"run.out_dir={tmp_path / 'run'}", "--resume", checkpoint, "--warm-start")
    assert code == 0, err
    assert f"resumed from {checkpoint} at global step 8 (this config's stages count it as step 4)" in out
    info = json.loads((tmp_path / "run" / "metrics.json").read_text())["info"]
    assert info["warm_start_from"] == str(checkpoint)
    assert info["warm_start_config_hash"] == load_checkpoint(checkpoint)["meta"]["config_hash"] != info["config_hash"]
    assert info["warm_start_changed"] == ["stages.s1.iters", "stages.s2.iters", "stages.s3.iters"]


def test_other_networks_are_refused_even_as_a_warm_start(capsys, trained, tmp_path):
    code, _, err = run_cli(capsys, "train", *TINY, *stages(4), "--set", "student.width=0.25",
                           "--set", f"run.cache_dir={trained / 'cache'}", "--set", f"run.out_dir={tmp_path / 'run'}",
                           "--resume", trained / "run" / "checkpoints" / "last.pt", "--warm-start")
    assert_one_error(code, err, "wrong architecture", "student.width: checkpoint 0.5 vs config 0.25")
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(capsys, "train", *TINY, "--warm-start")
    assert_one_error(code, err, "--warm-start needs --resume CHECKPOINT")


def test_a_checkpoint_spelling_a_renamed_option_still_resumes(small_cfg, small_teacher, tmp_path):
    cfg = small_cfg("methods.sdakd.warm_d=false")
    saved = cfg.to_dict() | {"methods": {"sdakd": {"warm_student_d": False}}}  # written before the rename
    engine = Engine(METHODS.get("sdakd")(cfg, small_teacher), synthetic_batches(), device=torch.device("cpu"),
                    lr_g=1e-4, lr_d=1e-4, betas=(0.9, 0.99), checkpoint_dir=tmp_path / "ck",
                    metadata={"config": saved, "config_hash": config_hash(cfg)})
    engine._checkpoint()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checkpoint's old spelling is not the user's to fix
        assert check_resumable(cfg, tmp_path / "ck" / "last.pt") == {}


# ---------------------------------------------------------------- 4. a failed rebuild keeps the dataset


def test_a_failed_rebuild_keeps_the_dataset(capsys, tmp_path):
    good = write_photos(tmp_path / "good", ["a.png", "b.png", "c.png", "d.png"])
    bad = write_photos(tmp_path / "trunc", ["a.png", "b.png", "c.png", "d.png"])
    whole = (bad / "a.png").read_bytes()
    (bad / "a.png").write_bytes(whole[: len(whole) // 2])  # the header still reads; the pixels do not
    ds = tmp_path / "ds"
    assert run_cli(capsys, "data", "build", "--images", good, "--out", ds, "--min-side", "32")[0] == 0
    before = (ds / "manifest.json").read_text()
    code, _, err = run_cli(capsys, "data", "build", "--images", bad, "--out", ds, "--min-side", "32")
    assert_one_error(code, err, f"{bad / 'a.png'} is not a readable image", "truncated")
    assert (ds / "manifest.json").read_text() == before and load_manifest(ds)["counts"] == {"train": 2, "val": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "good", "trunc"], "no half-built folder left"


def test_a_rebuild_replaces_the_dataset_whole_and_never_others_files(capsys, tmp_path):
    ds = tmp_path / "ds"
    many = write_photos(tmp_path / "many", [f"{i}.png" for i in range(6)])
    assert run_cli(capsys, "data", "build", "--images", many, "--out", ds, "--min-side", "32")[0] == 0
    few = write_photos(tmp_path / "few", ["x.png", "y.png", "z.png"])
    assert run_cli(capsys, "data", "build", "--images", few, "--out", ds, "--min-side", "32")[0] == 0
    assert load_manifest(ds)["counts"] == {"train": 1, "val": 2}
    code, _, err = run_cli(capsys, "data", "build", "--images", few, "--out", few)
    assert_one_error(code, err, f"out_dir {few} holds files that are not part of a dataset (x.png, y.png, z.png)")
    assert sorted(p.name for p in few.iterdir()) == ["x.png", "y.png", "z.png"]


# ---------------------------------------------------------------- 9. one message, never a traceback


def test_a_config_that_is_a_folder_or_not_utf8_is_one_error(capsys, tmp_path):
    assert_one_error(*run_cli(capsys, "train", "--config", tmp_path)[::2], f"config file {tmp_path} is a folder")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("preset: tiny\n# café\n".encode("latin-1"))
    assert_one_error(*run_cli(capsys, "train", "--config", latin1)[::2], f"config file {latin1} is not UTF-8 text")


@pytest.mark.parametrize("content", ["poisoned", "empty"])
def test_a_corrupt_teacher_cache_is_one_error(capsys, trained, tmp_path, content):
    argv = [*TINY, "--set", "method=sdakd", "--set", f"run.cache_dir={trained / 'cache'}",
            "--set", f"run.out_dir={tmp_path / 'teacher'}"]
    cfg = load_config("tiny", overrides=argv[3::2])
    path = trained / "cache" / "teachers" / f"{pretrain_key(cfg, ensure_dataset(cfg))}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "pwned"
    poisoned(path, marker) if content == "poisoned" else path.write_bytes(b"")
    try:
        code, _, err = run_cli(capsys, "teacher", *argv)
    finally:
        path.unlink()
    reason = "Unsupported global" if content == "poisoned" else "the file ends early"
    assert_one_error(code, err, f"cache {path} is unreadable ({reason}", "delete it")
    assert not marker.exists()


def test_an_unknown_tracking_uri_scheme_is_one_error(capsys):
    code, _, err = run_cli(capsys, "ui", "--tracking-uri", "foo://bar")
    assert_one_error(code, err, "tracking URI foo://bar: unknown scheme 'foo'", "sqlite:///PATH")


def test_eval_of_the_wrong_architecture_names_the_keys_and_shapes(capsys, tmp_path):
    (tmp_path / "config.yaml").write_text("preset: tiny\n")
    torch.save(student_generator(load_config("tiny", overrides=["student.width=0.25"])).state_dict(),
               tmp_path / "student.pt")
    code, _, err = run_cli(capsys, "eval", tmp_path / "student.pt")
    assert_one_error(code, err, f"{tmp_path / 'student.pt'} does not fit", "shape mismatch: body.0.weight expected (")
    assert "Error(s) in loading" not in err


def test_an_empty_or_poisoned_checkpoint_is_one_error_without_torch_advice(capsys, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--resume", empty)
    assert_one_error(code, err, f"checkpoint {empty} is empty (0 bytes)")
    marker = tmp_path / "pwned"
    bad = poisoned(tmp_path / "bad.pt", marker)
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--resume", bad)
    assert_one_error(code, err, f"checkpoint {bad} is not a plain weights file", "Unsupported global")
    assert not marker.exists()
    (tmp_path / "config.yaml").write_text("preset: tiny\n")
    code, _, err = run_cli(capsys, "eval", poisoned(tmp_path / "student.pt", marker))
    assert_one_error(code, err, "refused to load it", "Unsupported global")
    assert not marker.exists()

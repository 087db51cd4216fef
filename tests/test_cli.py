"""Every bad input gives one clear `error:` message, exit code 2, no traceback — and no compute before it."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import synthetic_batches
from sdakd.cli import main
from sdakd.config.identity import config_hash
from sdakd.engine import Engine
from sdakd.methods import METHODS


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_clear_error(code, err, *needles):
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["train", "--preset", "huge"], ["unknown preset 'huge'", "tiny"]),
        (["train", "--preset", "tiny", "--set", "student.depth=3"], ["student.depth: unknown field", "num_block"]),
        (["train", "--preset", "tiny", "--set", "stages.s1.iters=many"], ["stages.s1.iters", "integer"]),
        (["train", "--preset", "tiny", "--set", "stages.s3.iters=-5"], ["stages.s3.iters", "greater than or equal to 0"]),
        (["train"], ["--preset NAME or --config FILE"]),
        (["data", "build", "--images", "/no/such/folder", "--out", "/tmp/x"], ["/no/such/folder does not exist"]),
        (["eval", "/no/such/run"], ["/no/such/run does not exist"]),
    ],
)
def test_bad_input_is_one_clear_error(capsys, argv, needles):
    assert_clear_error(*run_cli(capsys, *argv)[::2], *needles)


def test_image_smaller_than_the_crop(capsys, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for name, size in (("a", 96), ("b", 96), ("c", 96), ("small", 20)):
        Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(images / f"{name}.png")
    code, _, err = run_cli(capsys, "data", "build", "--images", str(images), "--out", str(tmp_path / "o"),
                           "--min-side", "48", "--val", "1", "--test", "1")
    assert_clear_error(code, err, "small.png", "20", "48")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_checkpoint_of_the_wrong_architecture_is_refused_before_training(capsys, small_cfg, small_teacher, tmp_path):
    cfg = small_cfg("student.width=0.5")
    torch.manual_seed(0)
    engine = Engine(METHODS.get("sdakd")(cfg, small_teacher), synthetic_batches(), device=torch.device("cpu"),
                    lr_g=1e-4, lr_d=1e-4, betas=(0.9, 0.99), checkpoint_dir=tmp_path / "ck",
                    metadata={"config": cfg.to_dict(), "config_hash": config_hash(cfg)})
    engine._checkpoint()
    cache = tmp_path / "cache"
    code, out, err = run_cli(capsys, "train", "--preset", "tiny", "--set", "student.width=0.25",
                             "--set", f"run.cache_dir={cache}", "--resume", str(tmp_path / "ck" / "last.pt"))
    assert_clear_error(code, err, "wrong architecture", "student.width: checkpoint 0.5 vs config 0.25")
    assert not cache.exists(), "no dataset or teacher may be built before the checkpoint is checked"


def test_weights_file_that_would_run_code_is_refused(capsys, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "student.pt"
    torch.save({"student_g": Payload()}, bad)
    (tmp_path / "config.yaml").write_text("preset: tiny\n")
    code, _, err = run_cli(capsys, "eval", str(bad))
    assert_clear_error(code, err, str(bad))
    assert not marker.exists()

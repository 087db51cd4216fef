from pathlib import Path

import pytest

from sdakd.config.identity import config_hash, method_options

from sdakd.config.load import absolute_paths, load_config, preset_names, with_overrides
from sdakd.errors import SdakdError


def test_presets_ship_in_the_package():
    assert {"tiny", "realesrgan-x4"} <= set(preset_names())
    cfg = load_config("realesrgan-x4")
    assert (cfg.teacher.num_feat, cfg.teacher.num_block, cfg.teacher.num_grow_ch) == (64, 23, 32)
    assert cfg.student.width == 0.25 and cfg.student_d.width == 0.25


def test_dotted_overrides_reach_every_public_field():
    cfg = load_config(
        "tiny",
        overrides=[
            "stages.s3.iters=200", "student_d.width=0.125", "loss.fm.weight=0", "loss.gan.weight=0.5",
            "student.width=0.25", "student.num_block=2", "method=sdakd", "seed=7", "optim.lr_g=1e-3",
            "methods.sdakd.adversary=teacher", "data.degradation=second_order",
        ],
    )
    assert cfg.stages.s3.iters == 200 and cfg.student_d.width == 0.125 and cfg.loss.fm.weight == 0
    assert cfg.seed == 7 and cfg.optim.lr_g == 1e-3 and method_options(cfg).adversary == "teacher"


def test_config_is_immutable_and_overrides_copy():
    cfg = load_config("tiny")
    with pytest.raises(Exception):
        cfg.seed = 3
    other = with_overrides(cfg, {"stages.s1.iters": 0})
    assert other.stages.s1.iters == 0 and cfg.stages.s1.iters != 0


def test_hash_ignores_tracking_fields_and_inactive_method_sections():
    base = load_config("tiny")
    assert config_hash(base) == config_hash(load_config("tiny", overrides=["run.out_dir=/tmp/elsewhere"]))
    assert config_hash(base) == config_hash(load_config("tiny", overrides=["methods.sdakd.adversary=student"]))
    assert config_hash(base) != config_hash(load_config("tiny", overrides=["loss.gan.weight=0.2"]))
    assert len(config_hash(base)) == 12


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(preset="nope"), "unknown preset 'nope'; known presets: gcfsr-512, gcfsr-tiny, realesrgan-x4, tiny, x4plus-cpu"),
        (dict(preset="tiny", overrides=["stages.s3.iter=5"]), "stages.s3.iter: unknown field; allowed here: iters"),
        (dict(preset="tiny", overrides=["student.width=wide"]), "student.width"),
        (dict(preset="tiny", overrides=["stages.s2.iters=-1"]), "stages.s2.iters: Input should be greater than or equal to 0"),
        (dict(preset="tiny", overrides=["method=magic"]), "unknown method 'magic'; known: "),
        (dict(preset="tiny", overrides=["methods.sdakd.adversary=both"]), "methods.sdakd"),
        (dict(preset="tiny", overrides=["data.degradation=jpeg"]), "'bicubic' or 'second_order'"),
        (dict(preset="tiny", overrides=["loss.perceptual.layers={conv9_9: 1}"]), "unknown VGG19 layers"),
        (dict(preset="tiny", overrides=["oops"]), "must look like dotted.path=value"),
    ],
)
def test_bad_input_gives_one_clear_error(kwargs, needle):
    with pytest.raises(SdakdError) as err:
        load_config(**kwargs)
    assert needle in str(err.value)


def test_config_file_may_name_its_preset(tmp_path: Path):
    path = tmp_path / "exp.yaml"
    path.write_text("preset: tiny\nstages:\n  s3:\n    iters: 9\n")
    cfg = load_config(path=path)
    assert cfg.stages.s3.iters == 9 and cfg.teacher.num_feat == 48
    path.write_text("stages: [1, 2]\n")
    with pytest.raises(SdakdError, match=str(path)):
        load_config(path=path)


def test_absolute_paths_resolves_every_path_field_from_the_working_directory(tmp_path, monkeypatch):
    """What search trials and grid cells get: Tune runs them in other folders than the command's."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny", overrides=["teacher.weights=weights/teacher.pth", "data.root=shards"])
    out = absolute_paths(cfg)
    assert out.teacher.weights == tmp_path / "weights" / "teacher.pth"
    assert out.data.root == tmp_path / "shards"
    assert out.run.cache_dir == tmp_path / cfg.run.cache_dir
    assert absolute_paths(out) == out


def test_a_config_written_with_warm_student_d_still_loads_with_a_deprecation_warning(tmp_path: Path):
    """Configs and MLflow params from before every method said `warm_d`."""
    path = tmp_path / "old.yaml"
    path.write_text("preset: tiny\nmethods:\n  sdakd:\n    warm_student_d: false\n")
    with pytest.warns(FutureWarning, match="warm_student_d is deprecated: write methods.sdakd.warm_d"):
        cfg = load_config(path=path)
    assert method_options(cfg).warm_d is False
    assert config_hash(cfg) == config_hash(load_config("tiny", overrides=["methods.sdakd.warm_d=false"]))
    with pytest.raises(SdakdError, match="contradicts warm_d"):
        load_config("tiny", overrides=["methods.sdakd.warm_student_d=false", "methods.sdakd.warm_d=true"])

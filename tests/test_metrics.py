"""The metric registry against torchmetrics' own metrics computed directly with the same weights files on the same
images; metrics without weights are absent and said so; searches refuse objectives their config cannot compute.

No network: the backbones are randomly initialised here and saved to files, as a user's local copies would be."""

from __future__ import annotations

import pytest
import ray
import torch
import torch_fidelity.feature_extractor_inceptionv3 as fidelity
import torchvision
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

from sdakd.cli import main
from sdakd.data.dataset import ensure_dataset
from sdakd.errors import SdakdError
from sdakd.evaluate.registry import METRICS, metric, unavailable
from sdakd.evaluate.validator import Validator
from sdakd.models.from_config import student_generator
from sdakd.teacher.cache import build_teacher

EVAL = ["teacher.pretrain.iters=10", "teacher.pretrain.d_iters=2", "run.eval_max_images=2", "data.val_max_side=64", "eval.fid.patch=32", "eval.fid.patches=4"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random AlexNet (torchvision layout) and FID InceptionV3 (torch-fidelity layout) weights files."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    alexnet = folder / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), alexnet)
    with pytest.MonkeyPatch.context() as patch:  # build the network without its download, keep its random init
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        inception = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    fid = folder / "pt_inception-random.pth"
    torch.save(inception.state_dict(), fid)
    return {"alex": alexnet, "fid": fid}


def test_an_unknown_metric_lists_the_known_ones():
    with pytest.raises(SdakdError, match="unknown metric 'niqe2'; known: .*lpips_vs_teacher.*psnr_y"):
        metric("niqe2")


def test_lpips_and_fid_equal_torchmetrics_with_the_same_files(small_cfg, weights, tmp_path, monkeypatch):
    cfg = small_cfg(*EVAL, f"eval.lpips.backbone_weights={weights['alex']}", f"eval.fid.feature_weights={weights['fid']}")
    torch.set_num_threads(1)
    data = ensure_dataset(cfg)
    teacher = build_teacher(cfg, data, torch.device("cpu"))
    validator = Validator(cfg, data, teacher, torch.device("cpu"))
    assert not {"lpips", "lpips_vs_teacher", "fid", "kid"} & set(validator.unavailable)
    torch.manual_seed(1)
    student = student_generator(cfg).eval()
    scores = validator.student(student)
    outputs = [validator.run(student, lr, cond) for _, lr, _, cond in validator.pairs]

    # torchmetrics' LPIPS asks torchvision for the ImageNet AlexNet: found in TORCH_HOME's cache, it is not fetched
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / weights["alex"].name).write_bytes(weights["alex"].read_bytes())
    for reference, name in ((validator.gt, "lpips"), (validator.teacher_sr, "lpips_vs_teacher")):
        lpips = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
        expected = torch.stack([lpips(o, r) for o, r in zip(outputs, reference)]).mean()  # per image, as BasicSR
        assert scores[name] == pytest.approx(float(expected), abs=1e-6)

    fake, real = validator.patches(outputs), validator.patches(validator.gt)
    assert fake.shape == (2 * 4, 3, 32, 32)
    fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(weights["fid"]))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    assert scores["fid"] == pytest.approx(float(fid.compute()), abs=1e-6)
    kid = KernelInceptionDistance(feature=fid.inception, subsets=100, subset_size=len(real))  # a module: 8-bit input
    kid.update((real * 255).byte(), real=True)
    kid.update((fake * 255).byte(), real=False)
    torch.manual_seed(0)
    assert scores["kid"] == pytest.approx(float(kid.compute()[0]), abs=1e-6)
    assert validator.references().keys() >= {"bicubic_lpips", "teacher_lpips", "bicubic_fid", "teacher_kid"}


def test_without_weights_the_metrics_are_absent_and_say_why(small_cfg, tmp_path):
    cfg = small_cfg(f"eval.lpips.backbone_weights={tmp_path / 'absent.pth'}")
    reasons = unavailable(cfg, has_teacher=True)
    assert set(reasons) == {"lpips", "lpips_vs_teacher", "fid", "kid"}  # NIQE: the installed basicsr's file
    assert reasons["lpips"] == f"eval.lpips.backbone_weights: LPIPS weights {tmp_path / 'absent.pth'} not found"
    assert reasons["fid"].startswith("eval.fid.feature_weights: no FID weights given")
    no_teacher = unavailable(small_cfg("method=vanilla"), has_teacher=False)
    assert no_teacher["psnr_y_vs_teacher"] == "method vanilla trains without a teacher"
    poisoned = tmp_path / "poisoned.pth"
    torch.save({"weights": torch.zeros(1), "code": print}, poisoned)  # a pickle that names a function
    assert "is not a plain weights file" in unavailable(small_cfg(f"eval.fid.feature_weights={poisoned}"), True)["fid"]
    assert all(METRICS.get(name).mode in ("max", "min") for name in METRICS.names())


def test_a_search_on_an_unavailable_objective_fails_before_ray_starts(tmp_path, capsys):
    space = tmp_path / "lpips_space.yaml"
    space.write_text(
        "base: {preset: tiny}\nparameters:\n  loss.gan.weight: {type: loguniform, low: 1.0e-3, high: 1.0e-1}\n"
        "objectives: [{metric: lpips_vs_teacher, mode: min}]\nsamples: 2\n"
    )
    assert main(["search", str(space), "--set", f"run.out_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "objectives metric lpips_vs_teacher is unavailable" in err and "eval.lpips.backbone_weights" in err
    assert not ray.is_initialized() and not (tmp_path / "out").exists()

"""NIQE and its MATLAB-style imresize against BasicSR's own (a port of the MATLAB release, which ships the release's
pristine parameters as niqe_pris_params.npz) and against a resize worked out by hand; the metric in the validator
and its absence, with the reason, when the parameters or the images do not allow it."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as photos

from sdakd.data.dataset import ensure_dataset
from sdakd.evaluate.niqe import imresize, niqe_y
from sdakd.evaluate.registry import metric, unavailable
from sdakd.evaluate.validator import Validator
from sdakd.files import fingerprint
from sdakd.models.from_config import student_generator
from sdakd.teacher.cache import build_teacher


@pytest.fixture(scope="module")
def basicsr():
    """BasicSR's niqe and matlab_functions modules, imported without running basicsr/__init__.py (it imports a
    torchvision module that torchvision has since removed); no basicsr module is left in sys.modules."""
    spec = importlib.util.find_spec("basicsr")  # finding a top-level package runs none of it
    assert spec is not None, "basicsr is missing: pip install -e '.[dev]'"
    root = Path(spec.origin).parent
    package = types.ModuleType("basicsr")
    package.__path__ = [str(root)]
    sys.modules["basicsr"] = package
    try:
        niqe = importlib.import_module("basicsr.metrics.niqe")
        resize = importlib.import_module("basicsr.utils.matlab_functions")
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] == "basicsr"]:
            del sys.modules[name]
    return types.SimpleNamespace(niqe=niqe, imresize=resize.imresize, params=root / "metrics" / "niqe_pris_params.npz")


def test_imresize_halves_as_matlab_worked_by_hand():
    # shrinking by 2: kernel 0.5 * cubic(d / 2) at d = +-0.5 .. +-3.5 from output k's centre 2k - 0.5 (1-based)
    weights = torch.tensor([-3, -9, 29, 111, 111, 29, -9, -3], dtype=torch.float64) / 256
    # its taps 2k - 4 .. 2k + 3, those beyond an edge mirrored (0 -> 1, -1 -> 2, 9 -> 8 ...), here 0-based
    taps = [[2, 1, 0, 0, 1, 2, 3, 4], [0, 0, 1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7, 7], [3, 4, 5, 6, 7, 7, 6, 5]]
    by_hand = torch.zeros(4, 8, dtype=torch.float64)
    for row, columns in enumerate(taps):
        for column, weight in zip(columns, weights):
            by_hand[row, column] += weight
    img = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(imresize(img, 0.5), by_hand @ img @ by_hand.T, rtol=0, atol=1e-15)


@pytest.mark.parametrize("scale", [0.5, 0.37, 2.0])
def test_imresize_equals_basicsr(basicsr, scale):
    img = torch.rand(3, 37, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = imresize(img, scale)
    theirs = basicsr.imresize(img.float(), scale).double()  # BasicSR computes in float32
    assert ours.shape == theirs.shape == (3, np.ceil(37 * scale), np.ceil(50 * scale))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def as_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).double() / 255


@pytest.mark.parametrize("photo", ["chelsea", "coins"])
def test_niqe_equals_basicsr_with_the_release_parameters(basicsr, photo):
    img = getattr(photos, photo)()  # RGB uint8; BasicSR reads BGR
    img = img if img.ndim == 3 else np.stack([img] * 3, axis=-1)
    expected = basicsr.niqe.calculate_niqe(img[..., ::-1], crop_border=4)
    assert niqe_y(as_tensor(img), basicsr.params, crop_border=4) == pytest.approx(expected, rel=1e-4)


def test_niqe_equals_basicsr_in_float64_where_float32_moves_it(basicsr, monkeypatch):
    """Flat areas make NIQE ill-conditioned: on this photo BasicSR's float32 arithmetic moves it by 0.8 %. Its
    niqe() on the same Y in float64, with a float64 resize (ours, which equals BasicSR's and the hand-worked one
    above), agrees with ours to rounding: the difference is precision, not the algorithm."""
    img = photos.immunohistochemistry()
    y = basicsr.niqe.to_y_channel(img[..., ::-1].astype(np.float32))[4:-4, 4:-4, 0].round().astype(np.float64)
    pristine = np.load(basicsr.params)
    args = (pristine["mu_pris_param"], pristine["cov_pris_param"], pristine["gaussian_window"])
    float32 = basicsr.niqe.calculate_niqe(img[..., ::-1], crop_border=4)
    float64_resize = lambda x, scale, antialiasing: imresize(torch.from_numpy(x), scale).numpy()  # noqa: E731
    monkeypatch.setattr(basicsr.niqe, "imresize", float64_resize)
    ours = niqe_y(as_tensor(img), basicsr.params, crop_border=4)
    assert ours == pytest.approx(basicsr.niqe.niqe(y, *args), rel=1e-9)
    assert ours != pytest.approx(float32, rel=5e-3)


def test_niqe_uses_the_parameters_of_its_file(basicsr, tmp_path):
    """Another pristine model and window, written to a file: the score moves with them, as BasicSR's does."""
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(36, 36))
    mean, cov = rng.normal(size=(1, 36)), spread @ spread.T / 36 + 0.1 * np.eye(36)  # symmetric positive definite
    window = np.outer(*[np.exp(-(np.arange(5) - 2.0) ** 2 / 2)] * 2)
    window /= window.sum()
    params = tmp_path / "pristine.npz"
    np.savez(params, mu_pris_param=mean, cov_pris_param=cov, gaussian_window=window)
    img = photos.chelsea()
    y = basicsr.niqe.to_y_channel(img[..., ::-1].astype(np.float32))[3:-3, 3:-3, 0].round().astype(np.float64)
    expected = basicsr.niqe.niqe(y, mean, cov, window)
    ours = niqe_y(as_tensor(img), params, crop_border=3)
    assert ours == pytest.approx(expected, rel=1e-4)
    assert ours != pytest.approx(niqe_y(as_tensor(img), basicsr.params, crop_border=3), rel=1e-2)


def test_an_image_without_two_textured_blocks_has_no_niqe(basicsr):
    """No covariance of block features: NaN (BasicSR's code raises there); a size without two blocks is refused."""
    flat = torch.full((3, 200, 200), 0.5, dtype=torch.float64)
    assert math.isnan(niqe_y(flat, basicsr.params, crop_border=4))
    with pytest.raises(ValueError, match="at least two 96x96 blocks"):
        niqe_y(flat[:, :104, :190], basicsr.params, crop_border=4)  # one block


def test_validator_scores_niqe_on_each_output(small_cfg, basicsr):
    cfg = small_cfg("teacher.pretrain.iters=10", "teacher.pretrain.d_iters=2", "run.eval_max_images=2",
                    "data.val_max_side=200", f"eval.niqe.params={basicsr.params}")
    assert metric("niqe").mode == "min"
    torch.set_num_threads(1)
    data = ensure_dataset(cfg)
    teacher = build_teacher(cfg, data, torch.device("cpu"))
    validator = Validator(cfg, data, teacher, torch.device("cpu"))
    assert "niqe" not in validator.unavailable and "niqe_vs_teacher" not in validator.unavailable
    assert fingerprint(validator.weights["niqe"]).startswith("niqe_pris_params.npz sha256:")  # the run's tag
    torch.manual_seed(1)
    student = student_generator(cfg).eval()
    scores = validator.student(student)
    assert "niqe_vs_teacher" not in scores
    outputs = [validator.run(student, lr, cond) for _, lr, _, cond in validator.pairs]
    as_bgr = [(o[0].permute(1, 2, 0) * 255).round().byte().numpy()[..., ::-1] for o in outputs]
    expected = np.mean([basicsr.niqe.calculate_niqe(img, crop_border=cfg.data.scale) for img in as_bgr])
    assert scores["niqe"] == pytest.approx(expected, rel=1e-4)
    assert {"bicubic_niqe", "teacher_niqe"} <= validator.references().keys()


def test_without_usable_parameters_niqe_is_absent_and_says_why(small_cfg, tmp_path):
    # (without any named file, the installed basicsr's: tests/test_suites.py)
    missing = tmp_path / "absent.npz"
    assert unavailable(small_cfg(f"eval.niqe.params={missing}"), True)["niqe"] == (
        f"eval.niqe.params: NIQE parameters {missing} not found")

    def reason(name: str, **arrays) -> str:
        np.savez(tmp_path / name, **arrays)
        return unavailable(small_cfg(f"eval.niqe.params={tmp_path / name}"), True)["niqe"]

    assert "lacks cov_pris_param, gaussian_window" in reason("partial.npz", mu_pris_param=np.zeros(36))
    window = np.ones((7, 7)) / 49
    small = {"mu_pris_param": np.zeros(18), "cov_pris_param": np.eye(18), "gaussian_window": window}
    assert "NIQE needs 36 and 36x36" in reason("small.npz", **small)
    pickled = np.array([print], dtype=object)  # an object array loads only by unpickling, which is refused
    assert "is not a readable .npz" in reason("pickled.npz", **small | {"mu_pris_param": pickled})


def test_images_too_small_for_two_blocks_leave_niqe_unavailable(small_cfg, basicsr):
    cfg = small_cfg("method=vanilla", "data.val_max_side=64", f"eval.niqe.params={basicsr.params}")
    validator = Validator(cfg, ensure_dataset(cfg), None, torch.device("cpu"))
    assert "NIQE needs at least two 96x96 blocks" in validator.unavailable["niqe"]
    assert "niqe" not in validator.weights and "bicubic_niqe" not in validator.references()

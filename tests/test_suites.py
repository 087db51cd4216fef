"""Named evaluation suites (eval.suites): from an image folder, from LR/HR files paired by name, from a dataset's
split; the same LR for every method's run; scored per image into metrics.json and MLflow's names; reported in a
section of their own; and NIQE from the installed basicsr's pristine file when no other is named."""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from skimage import data as photos

from sdakd.ablate.power import detectable_effect
from sdakd.ablate.report_table import markdown, suite_section, summarise
from sdakd.data import build_dataset, val_pairs
from sdakd.data.dataset import ensure_dataset
from sdakd.data.degrade import bicubic_down
from sdakd.errors import SdakdError
from sdakd.evaluate.metrics import psnr_y
from sdakd.evaluate.niqe import BASICSR_PARAMS, niqe_params
from sdakd.evaluate.registry import unavailable
from sdakd.evaluate.suites import Suites, lr_digest
from sdakd.files import fingerprint
from sdakd.models.from_config import student_generator
from sdakd.pipeline import run
from sdakd.tracking.run import run_metrics
from sdakd.tracking.store import CELL_KEY, SEED

FAST = ["teacher.pretrain.iters=10", "teacher.pretrain.d_iters=2", "teacher.pretrain.batch_size=2",
        "run.eval_max_images=1", "data.val_max_side=64", "run.latency_repeats=1"]


def save_png(path, pixels: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def as_float(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


def photo(name: str, side: int) -> np.ndarray:
    img = getattr(photos, name)()
    img = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]
    return np.ascontiguousarray(img[:side, :side])


def suites_of(small_cfg, *overrides: str) -> tuple[object, Suites]:
    cfg = small_cfg(*overrides)
    return cfg, Suites(cfg, ensure_dataset(cfg), torch.device("cpu"))


def test_a_suite_from_an_image_folder_is_degraded_bounded_and_scored_per_image(small_cfg, tmp_path):
    folder = tmp_path / "photos"
    chelsea = save_png(folder / "chelsea.png", photo("chelsea", 150))
    save_png(folder / "astronaut.jpg", photo("astronaut", 64))
    (folder / "notes.txt").write_text("not an image")
    cfg, suites = suites_of(small_cfg, f"eval.suites.folder.images={folder}", "eval.suites.folder.max_side=120")
    names = [name for name, _, _ in suites.pairs["folder"]]
    assert names == ["astronaut", "chelsea"]  # by name; the text file is no image
    (_, lr_a, hr_a), (_, lr_c, hr_c) = suites.pairs["folder"]
    hr = as_float(chelsea)[:, 15:135, 15:135]  # centre-cropped to max_side
    torch.testing.assert_close(hr_c, hr, rtol=0, atol=0)
    torch.testing.assert_close(lr_c, bicubic_down(hr, 4), rtol=0, atol=0)
    assert tuple(hr_a.shape) == (3, 64, 64) and tuple(lr_a.shape) == (3, 16, 16)

    torch.manual_seed(0)
    student = student_generator(cfg).eval()
    found = suites.report(student)["folder"]
    assert found["images"] == ["astronaut", "chelsea"] and found["degradation"] == "bicubic"
    with torch.no_grad():
        by_hand = psnr_y(student(lr_c[None]).clamp(0, 1), hr[None], 4)
    assert found["per_image"]["psnr_y"]["chelsea"] == pytest.approx(by_hand, abs=1e-9)
    assert found["student"]["psnr_y"] == pytest.approx(statistics.fmean(found["per_image"]["psnr_y"].values()))
    assert "psnr_y_vs_teacher" not in found["student"] and "bicubic_psnr_y" in found["references"]
    # MLflow's names: suite.<name>.<metric>, and per image for the report's paired statistics
    logged = run_metrics({"suites": {"folder": found}})
    assert logged["suite.folder.psnr_y"] == found["student"]["psnr_y"]
    assert logged["suite.folder.per_image.psnr_y.chelsea"] == found["per_image"]["psnr_y"]["chelsea"]
    assert logged["suite.folder.bicubic_psnr_y"] == found["references"]["bicubic_psnr_y"]


def test_a_suite_of_paired_files_reads_both_and_refuses_an_unmatched_name_in_one_error(small_cfg, tmp_path):
    rng = np.random.default_rng(0)
    lr_dir, hr_dir = tmp_path / "lr", tmp_path / "hr"
    lrs = {name: save_png(lr_dir / f"{name}.png", rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))
           for name in ("a", "b")}
    hrs = {name: save_png(hr_dir / f"{name}.png", rng.integers(0, 256, (96, 80, 3), dtype=np.uint8))
           for name in ("a", "b")}
    paired = [f"eval.suites.real.lr={lr_dir}", f"eval.suites.real.hr={hr_dir}"]
    _, suites = suites_of(small_cfg, *paired, "eval.suites.real.max_side=40")
    (name, lr, hr), _ = suites.pairs["real"]
    # the LR as read, not made from the HR; both centre-cropped together: LR 10x10 at (7, 5), HR under it
    assert name == "a"
    torch.testing.assert_close(lr, as_float(lrs["a"])[:, 7:17, 5:15], rtol=0, atol=0)
    torch.testing.assert_close(hr, as_float(hrs["a"])[:, 28:68, 20:60], rtol=0, atol=0)

    save_png(lr_dir / "only_lr.png", lrs["a"])
    save_png(hr_dir / "only_hr.png", hrs["a"])
    with pytest.raises(SdakdError) as err:
        suites_of(small_cfg, *paired)
    assert str(err.value).count("\n") == 0 and "eval.suites.real: LR and HR files must pair by name" in str(err.value)
    assert f"in {lr_dir}: only_lr; in {hr_dir}: only_hr" in str(err.value)
    (lr_dir / "only_lr.png").unlink()
    (hr_dir / "only_hr.png").unlink()
    save_png(hr_dir / "b.png", hrs["b"][:92])
    with pytest.raises(SdakdError, match=r"eval.suites.real: b.png is 80x92, not data.scale=4 times b.png \(20x24\)"):
        suites_of(small_cfg, *paired)


def test_a_suite_from_a_dataset_split(small_cfg, tmp_path):
    """The run's test split with bicubic LR is exactly what the test section scores; `dataset` reads another."""
    cfg, suites = suites_of(small_cfg, "eval.suites.held_out.split=test")
    expected = val_pairs(ensure_dataset(cfg).root, 4, split="test")
    assert [p[0] for p in suites.pairs["held_out"]] == [p[0] for p in expected] == [
        "brick", "camera", "coins", "grass", "gravel", "moon"]
    for (_, lr, hr), (_, lr2, hr2) in zip(suites.pairs["held_out"], expected):
        assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
    images = tmp_path / "images"
    for name in ("coffee", "rocket", "chelsea"):
        save_png(images / f"{name}.png", photo(name, 80))
    other = tmp_path / "other"
    build_dataset(other, images, val_count=1, test_count=1)
    _, suites = suites_of(small_cfg, f"eval.suites.other.dataset={other}", "eval.suites.other.split=val",
                          "eval.suites.other.max_images=1")
    assert [p[0] for p in suites.pairs["other"]] == ["coffee"]  # sorted: chelsea train, coffee val, rocket test


def test_every_method_sees_the_same_second_order_lr(small_cfg, tmp_path):
    """Two methods' runs degrade the suite alike (the LR tensors' hashes are equal); another suite seed, or bicubic,
    gives other LR. The run records the suite per image, its LR hash, and NIQE from the installed basicsr."""
    suite = ["eval.suites.real.split=test", "eval.suites.real.degradation=second_order",
             "eval.suites.real.max_side=200", "eval.suites.real.max_images=2", "eval.suites.real.seed=3"]
    runs = {}
    for method, stage_ends in (("sdakd", "true"), ("output_kd", "false")):
        cfg = small_cfg(*FAST, *suite, f"method={method}", f"run.out_dir={tmp_path / method}",
                        f"eval.suites.real.stage_ends={stage_ends}")
        exp = run(cfg)
        runs[method] = json.loads((tmp_path / method / "metrics.json").read_text())
    real = {method: m["suites"]["real"] for method, m in runs.items()}
    assert real["sdakd"]["lr_sha256"] == real["output_kd"]["lr_sha256"] == lr_digest(exp.suites.pairs["real"])
    assert real["sdakd"]["images"] == ["brick", "camera"] and real["sdakd"]["degradation"] == "second_order"
    assert real["sdakd"]["per_image"]["psnr_y"] != real["output_kd"]["per_image"]["psnr_y"]  # other students
    assert real["sdakd"]["references"] == pytest.approx(real["output_kd"]["references"])  # same LR, same teacher
    # scored at every stage end on request only (the last stage's EMA student is the final one)
    assert all("suite.real.psnr_y" in runs["sdakd"]["stages"][stage] for stage in ("s1", "s2", "s3"))
    assert runs["sdakd"]["stages"]["s3"]["suite.real.psnr_y"] == pytest.approx(real["sdakd"]["student"]["psnr_y"])
    assert not any(key.startswith("suite.") for key in runs["output_kd"]["stages"]["s3"])
    others = {}
    for name, change in (("seed", "eval.suites.real.seed=4"), ("bicubic", "eval.suites.real.degradation=bicubic")):
        _, suites = suites_of(small_cfg, *FAST, *suite, change)
        others[name] = lr_digest(suites.pairs["real"])
    assert len({real["sdakd"]["lr_sha256"], *others.values()}) == 3
    # the suite's images are 200 px, wide enough for NIQE's blocks; validation's 64 px are not
    assert "niqe" in real["sdakd"]["student"] and "niqe" in runs["sdakd"]["unavailable"]
    installed = niqe_params(None)
    assert runs["sdakd"]["metric_files"]["niqe"] == str(installed)
    assert runs["sdakd"]["metric_weights"]["niqe"] == fingerprint(installed)


def test_niqe_is_scored_with_the_installed_basicsr_file_and_absent_without_it(small_cfg, tmp_path, monkeypatch):
    spec = importlib.util.find_spec("basicsr")
    assert spec is not None, "basicsr is missing: pip install -e '.[dev]'"
    installed = niqe_params(None)
    assert installed == next(iter(spec.submodule_search_locations)) / BASICSR_PARAMS and installed.is_file()
    assert "niqe" not in unavailable(small_cfg(), True)
    named = tmp_path / "mine.npz"
    shutil.copy(installed, named)
    assert niqe_params(named) == named  # a named file wins

    # another basicsr first on the path, without the file: no NIQE, and the reason says where it looked
    fake = tmp_path / "site" / "basicsr"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "basicsr", raising=False)
    importlib.invalidate_caches()
    assert niqe_params(None) is None
    assert unavailable(small_cfg(), True)["niqe"] == (
        "eval.niqe.params: no NIQE parameters given, and no installed basicsr ships niqe_pris_params.npz (needs an "
        ".npz with mu_pris_param, cov_pris_param, gaussian_window)")
    (fake / "metrics").mkdir()
    shutil.copy(installed, fake / "metrics" / "niqe_pris_params.npz")
    assert niqe_params(None) == fake / "metrics" / "niqe_pris_params.npz"


@pytest.mark.parametrize(("overrides", "needle"), [
    (["eval.suites.x.split=test", "eval.suites.x.images=a"], "needs exactly one source, got ['split', 'images']"),
    (["eval.suites.x.lr=here"], "paired files need both lr and hr folders"),
    (["eval.suites.x.lr=a", "eval.suites.x.hr=b", "eval.suites.x.degradation=bicubic"], "degradation must be none"),
    (["eval.suites.x.images=a", "eval.suites.x.degradation=none"], "degradation none is for paired files"),
    (["eval.suites.x y.split=test"], "suite names ['x y']: allowed are letters, digits, _ and -"),
])
def test_a_bad_suite_is_refused_with_its_field(small_cfg, overrides, needle):
    with pytest.raises(SdakdError) as err:
        small_cfg(*overrides)
    assert "eval.suites" in str(err.value) and needle in str(err.value)


def test_a_missing_suite_folder_fails_before_any_training(small_cfg, tmp_path):
    """Before the teacher is pretrained, too (its cache stays empty)."""
    cfg = small_cfg(*FAST, f"eval.suites.gone.images={tmp_path / 'nowhere'}", f"run.out_dir={tmp_path / 'run'}")
    with pytest.raises(SdakdError, match=f"eval.suites.gone.images: images_dir {tmp_path / 'nowhere'} does not exist"):
        run(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache" / "teachers").exists()


def test_the_report_has_a_section_per_suite_with_its_paired_statistics_and_power(small_cfg):
    """Synthetic MLflow records of two cells x 3 seeds: the suite's section reads `suite.<name>.*` only."""
    cfg = small_cfg("eval.suites.real.split=test", "eval.suites.real.degradation=second_order")
    section = suite_section("real", cfg.eval.suites["real"])
    cells = [type("Cell", (), {"name": name, "kind": "cell", "cfg": cfg, "key": name})() for name in ("a", "b")]
    scores = {"a": [24.0, 24.5, 23.8], "b": [24.3, 24.4, 24.4]}
    records = []
    for name, values in scores.items():
        for seed, value in enumerate(values):
            metrics = {"suite.real.psnr_y": value, "test.student.psnr_y": 30.0 + seed}
            metrics |= {f"suite.real.per_image.psnr_y.im{i}": value + 0.1 * i for i in range(3)}
            records.append({"tags": {CELL_KEY: name, SEED: str(seed)}, "metrics": metrics, "end_time": 1,
                            "run_id": f"{name}{seed}"})
    table = summarise("g", cells, records, "a", section)
    b = table.to_pylist()[1]
    diffs = np.subtract(scores["b"], scores["a"])
    assert b["psnr_y_mean"] == pytest.approx(np.mean(scores["b"])) and b["psnr_y_diff"] == pytest.approx(diffs.mean())
    assert b["psnr_y_detectable"] == pytest.approx(detectable_effect(3) * diffs.std(ddof=1), rel=1e-9)
    assert not b["psnr_y_significant"] and b["psnr_y_seeds_needed"] > 3
    text = markdown(table, "a", section)
    assert "Images: split test of the run dataset; the training's second-order degradation" in text
    assert f"±{b['psnr_y_detectable']:.2f}; needs {b['psnr_y_seeds_needed']:.0f} seeds" in text
    assert "±MDD: the minimum detectable difference" in text and "latency" not in text
    assert isinstance(table, pa.Table) and "latency_ms_mean" not in table.column_names

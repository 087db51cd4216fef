"""MLflow tracking end to end: `sdakd ablate smoke` (Ray Tune) into one fresh sqlite store shared by this module,
rerun by name, a failed cell rerun, `sdakd report`, the MLflow UI in headless Chromium, and bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient

from sdakd.ablate.grid import EXPERIMENT, load_grid
from sdakd.ablate.stats import mean_ci
from sdakd.cli import main
from sdakd.config.project import REPO_ROOT
from sdakd.tracking.store import run_page

pytestmark = pytest.mark.slow
SCREENSHOTS = REPO_ROOT / "test-artifacts"
PARENT = "tags.`sdakd.role` = 'grid' and tags.`sdakd.group` = '{}'"
TAGS = {
    "sdakd.method", "sdakd.config_hash", "sdakd.seed", "mlflow.source.git.commit", "sdakd.git_dirty",
    "sdakd.dataset_checksum", "sdakd.teacher", "sdakd.perceptual_pretrained", "sdakd.lpips_pretrained",
    "sdakd.ray_trial_id", "sdakd.cell", "sdakd.grid",
}
ARTIFACTS = {"config.yaml", "command.txt", "metrics.json", "student.pt", "plots/samples.png", "plots/loss_curves.png"}


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


class Readback:
    """Read-back helpers over the module's store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)

    @property
    def experiment_id(self) -> str:
        return self.client.get_experiment_by_name(EXPERIMENT).experiment_id

    def parents(self, grid: str):
        return self.client.search_runs([self.experiment_id], PARENT.format(grid))

    def children(self, grid: str):
        (parent,) = self.parents(grid)
        return self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")

    def artifacts(self, run_id: str, folder: str | None = None) -> set[str]:
        names = set()
        for item in self.client.list_artifacts(run_id, folder):
            names |= self.artifacts(run_id, item.path) if item.is_dir else {item.path}
        return names


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh working folder (default store: ./mlflow.db) with `sdakd ablate smoke` run once."""
    root = tmp_path_factory.mktemp("tracking")
    started_ray = not ray.is_initialized()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("SDAKD_TRACKING_URI", raising=False)
        if started_ray:  # one Ray for every `ablate` here: its warm workers skip the imports on each rerun
            ray.init(address="local", include_dashboard=False)
        try:
            code, out = cli("ablate", "smoke")
            assert code == 0, out
            yield Readback(root)
        finally:
            if started_ray:
                ray.shutdown()


def test_ablate_logs_nested_runs_and_reruns_by_name(store):
    (parent,) = store.parents("smoke")
    children = store.children("smoke")
    _, cells = load_grid("smoke")
    assert sorted(r.info.run_name for r in children) == sorted(c.run_name for c in cells)
    for run in children:
        data = run.data
        assert run.info.status == "FINISHED"
        assert TAGS <= set(data.tags), TAGS - set(data.tags)
        assert data.tags["sdakd.config_hash"] in {c.hash for c in cells}
        assert data.params["stages.s1.iters"] == "2" and "loss.fm.weight" in data.params
        assert all(len(value) <= 500 for value in data.params.values())
        assert {"student.psnr_y", "eval/psnr_y", "stages.s3.psnr_y", "loss/g_total", "device_seconds"} <= set(
            data.metrics
        )
        # the grid's evaluation suite, as MLflow names it, with the hash of its LR
        assert {"suite.held_out.psnr_y", "suite.held_out.per_image.psnr_y.brick"} <= set(data.metrics)
        assert len(data.tags["sdakd.suite.held_out.lr_sha256"]) == 64
        losses = store.client.get_metric_history(run.info.run_id, "loss/g_total")
        assert len(losses) == 6 and sorted(m.step for m in losses) == [1, 2, 3, 4, 5, 6]
        assert ARTIFACTS <= store.artifacts(run.info.run_id)
    weights = store.client.download_artifacts(children[0].info.run_id, "student.pt", str(store.root))
    assert all(isinstance(v, torch.Tensor) for v in torch.load(weights, weights_only=True).values())

    code, out = cli("ablate", "smoke")
    assert code == 0 and f"{len(cells)} already finished, 0 to run" in out
    assert "sdakd ui" in out  # the hint on how to browse the runs
    assert len(store.children("smoke")) == len(children) and len(store.parents("smoke")) == 1


def test_failed_cell_is_rerun_by_the_next_invocation(store, monkeypatch):
    # run.* is outside the config hash: a cell pinned to a GPU that does not exist fails at runtime, and once the
    # grid is fixed the same cell (same hash) runs again.
    monkeypatch.chdir(store.root)
    grid = yaml.safe_load((REPO_ROOT / "ablations" / "smoke.yaml").read_text())
    grid.update(cells={"pinned": {"run.device": "cuda:99"}}, baselines=[])
    path = store.root / "ablations" / "flaky.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(grid))
    code, out = cli("ablate", "flaky")
    assert code == 1 and "failed: pinned-seed0" in out
    (failed,) = store.children("flaky")
    assert failed.info.status == "FAILED"

    grid["cells"]["pinned"]["run.device"] = "cpu"
    path.write_text(yaml.safe_dump(grid))
    code, out = cli("ablate", "flaky")
    assert code == 0 and "0 already finished, 1 to run" in out
    runs = store.children("flaky")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    assert len({r.data.tags["sdakd.config_hash"] for r in runs}) == 1


def test_report_table_parquet_and_plot(store, capsys, monkeypatch):
    monkeypatch.chdir(store.root)
    assert main(["report", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "| cell | method | seeds | PSNR-Y (dB) | SSIM-Y | PSNR vs teacher (dB) |" in out and "n=1" in out
    assert "95 % CI" in out and "**Paired differences to full**" in out and "**Each method's own knobs**" in out
    table = pq.read_table(store.root / "reports" / "smoke.parquet").to_pylist()
    assert (store.root / "reports" / "smoke-bars.png").stat().st_size > 10_000
    assert not (store.root / "reports" / "smoke.png").exists()  # one student size: no quality-vs-MACs scatter
    runs = {r.data.tags["sdakd.cell"]: r.data.metrics for r in store.children("smoke")}
    assert [row["cell"] for row in table] == ["full", "no_fm", "vanilla"]
    for row in table:
        metrics = runs[row["cell"]]
        assert row["n"] == 1 and row["seeds"] == [0] and row["psnr_y_ci95"] is None
        # the report reads the held-out test images only, never the validation numbers that chose configs
        assert row["psnr_y_mean"] == pytest.approx(metrics["test.student.psnr_y"])
        assert row["psnr_y_mean"] != pytest.approx(metrics["student.psnr_y"])
        assert row["macs_mean"] == pytest.approx(metrics["cost.student.macs"])
        assert row["device_seconds_mean"] == pytest.approx(metrics["device_seconds"])
        if row["cell"] != "full":  # one seed: the paired difference and its bootstrap over the 2 test images
            assert row["psnr_y_diff"] == pytest.approx(metrics["test.student.psnr_y"] - runs["full"]["test.student.psnr_y"])
            assert row["psnr_y_p_t"] is None and row["psnr_y_p_boot"] is not None
    assert json.loads(table[0]["knobs"]) == {"loss.fm.weight": 1.0, "loss.gan.weight": 0.005, "student_d.width": 0.5}
    # the suite's section: the same images and LR as the test split here, so the same numbers, read from suite.*
    assert "### Suite `held_out`" in out and "**What the seeds can detect**" in out
    suite = pq.read_table(store.root / "reports" / "smoke-held_out.parquet").to_pylist()
    for row, test_row in zip(suite, table):
        assert row["psnr_y_mean"] == pytest.approx(runs[row["cell"]]["suite.held_out.psnr_y"])
        assert row["psnr_y_mean"] == pytest.approx(test_row["psnr_y_mean"], abs=1e-9)
        assert row["psnr_y_diff"] == pytest.approx(test_row["psnr_y_diff"], abs=1e-9)
    (parent,) = store.parents("smoke")
    assert {"report/smoke.md", "report/smoke.parquet", "report/smoke-held_out.parquet", "report/smoke-bars.png"} <= (
        store.artifacts(parent.info.run_id))


def test_confidence_interval_uses_the_t_distribution():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302652729 / 3**0.5)  # t(0.975, 2) * s / sqrt(n), s = 1
    assert mean_ci([5.0]) == (5.0, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_mlflow_ui_shows_the_grid_in_a_browser(store, tmp_path):
    port = _free_port()
    log = (tmp_path / "ui.log").open("w")
    ui = subprocess.Popen(
        [sys.executable, "-m", "sdakd.cli", "ui", "--port", str(port), "--tracking-uri", store.uri],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/health", 180)
        (parent,) = store.parents("smoke")
        # The parent run's page lists its child runs by name (the runs table folds them under the parent).
        url = f"http://127.0.0.1:{port}/{run_page(store.experiment_id, parent.info.run_id)}"
        expected = [EXPERIMENT, "grid:smoke", *(r.info.run_name for r in store.children("smoke"))]
        browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1000"]
        for budget in (15_000, 45_000):  # a loaded machine may need longer to render the React app
            dom = subprocess.run([*browser, f"--virtual-time-budget={budget}", "--dump-dom", url],
                                 capture_output=True, text=True, timeout=180).stdout
            if all(name in dom for name in expected):
                break
        assert all(name in dom for name in expected), [n for n in expected if n not in dom]
        SCREENSHOTS.mkdir(exist_ok=True)
        shot = SCREENSHOTS / "mlflow-ui-smoke.png"
        subprocess.run([*browser, f"--virtual-time-budget={budget}", f"--screenshot={shot}", url],
                       capture_output=True, timeout=180, check=True)
        assert shot.stat().st_size > 10_000
    finally:
        os.killpg(ui.pid, signal.SIGTERM)  # the server and any worker it forked
        try:
            ui.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
        log.close()


# ---------------------------------------------------------------- bad input: one clear error, before any training


BAD_GRIDS = {
    "bad_field": {"base": {"preset": "tiny"}, "cells": {"typo": {"student_d.widht": 0.5}}},
    "bad_baseline": {"base": {"preset": "tiny"}, "cells": {"full": {}}, "baselines": ["dcdd"]},
    "bad_suite": {"base": {"preset": "tiny", "overrides": {"eval.suites.gone.images": "nowhere"}}, "cells": {"full": {}}},
}


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["ablate", "nosuch"], ["unknown ablation grid 'nosuch'", "smoke", "baselines"]),
        (["ablate", "bad_field"], ["bad_field.yaml", "cells.typo", "student_d.widht: unknown field", "width"]),
        (["ablate", "bad_baseline"], ["bad_baseline.yaml", "unknown method 'dcdd'", "output_kd"]),
        (["ablate", "bad_suite"], ["eval.suites.gone.images: images_dir", "nowhere does not exist"]),
        (["ablate", "smoke", "--tracking-uri", "http://127.0.0.1:9"], ["http://127.0.0.1:9 is unreachable"]),
        (["report", "nosuch"], ["unknown ablation grid 'nosuch'"]),
    ],
)
def test_bad_input_fails_before_any_training(argv, needles, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ablations").mkdir()
    for name, grid in BAD_GRIDS.items():
        (tmp_path / "ablations" / f"{name}.yaml").write_text(yaml.safe_dump(grid))
    started = time.monotonic()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    assert time.monotonic() - started < 60
    assert not any((tmp_path / name).exists() for name in ("runs", ".sdakd", "mlflow.db"))

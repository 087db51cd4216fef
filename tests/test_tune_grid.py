"""A grid with `tune:`: every cell and baseline gets its own study of N trials over its method's own knobs (on the
validation images), then its winner runs with the grid's seeds; a rerun runs nothing new; the report shows each
method's tuned knobs. End to end through Ray Tune, Optuna and MLflow, on the smoke grid's few-step settings."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from sdakd.ablate.grid import EXPERIMENT, load_grid
from sdakd.ablate.tune import studies
from sdakd.cli import main
from sdakd.config.project import REPO_ROOT
from sdakd.methods import METHODS
from sdakd.search.space import Space

pytestmark = pytest.mark.slow


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_every_method_declares_knobs_a_search_space_accepts(small_cfg) -> None:
    for name in METHODS.names():
        assert METHODS.get(name).tunable, f"{name} declares no tunable knobs"
        space = Space(base={}, parameters=METHODS.get(name).tunable, objectives=[{"metric": "psnr_y", "mode": "max"}],
                      samples=1)
        for dotted, param in space.parameters.items():  # every bound is a value the method's config accepts
            for value in param.samples():
                small_cfg(f"method={name}", f"{dotted}={value}")


def test_a_tuned_grid_tunes_each_method_then_runs_its_seeds_and_reruns_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SDAKD_TRACKING_URI", raising=False)
    grid = yaml.safe_load((REPO_ROOT / "ablations" / "smoke.yaml").read_text())
    grid.update(seeds=[0, 1], cells={"sdakd": {}}, baselines=["output_kd"],
                tune={"trials": 3, "concurrency": 2, "objective": {"metric": "psnr_y_vs_teacher", "mode": "max"}})
    (tmp_path / "ablations").mkdir()
    (tmp_path / "ablations" / "tunegrid.yaml").write_text(yaml.safe_dump(grid))

    ray.init(address="local", include_dashboard=False)
    try:
        code, out = cli("ablate", "tunegrid")
        assert code == 0, out
        assert "tuning sdakd: 3 trials over loss.fm.weight, loss.gan.weight, student_d.width" in out
        assert "tuning output_kd: 3 trials over loss.teacher_output.weight" in out
        assert "4 to run" in out and out.index("tuning output_kd") < out.index("4 to run")  # studies, then seeds
        loaded, cells = load_grid("tunegrid")
        found = {s.cell: s for s in studies(loaded, cells)}
        stamps = {}
        for study in found.values():
            trials = json.loads((study.folder / "trials.json").read_text())
            assert len(trials) == 3 and study.folder.is_relative_to(tmp_path / "runs" / "ablate" / "tunegrid")
            stamps[study.cell] = (study.folder / "trials.json").stat().st_mtime_ns
        winners = {cell: study.winner() for cell, study in found.items()}

        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
        (parent,) = client.search_runs([experiment], "tags.`sdakd.group` = 'tunegrid'")
        runs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert sorted((r.data.tags["sdakd.cell"], r.data.tags["sdakd.seed"]) for r in runs) == [
            ("output_kd", "0"), ("output_kd", "1"), ("sdakd", "0"), ("sdakd", "1")]
        for run in runs:  # every seed trained the winner of its cell's study
            assert run.info.status == "FINISHED"
            for dotted, value in winners[run.data.tags["sdakd.cell"]].items():
                assert float(run.data.params[dotted]) == pytest.approx(float(value))

        code, out = cli("ablate", "tunegrid")
        assert code == 0 and "4 already finished, 0 to run" in out
        assert out.count("finished study in") == 2
        assert {s.cell: (s.folder / "trials.json").stat().st_mtime_ns for s in found.values()} == stamps
    finally:
        ray.shutdown()

    report = (tmp_path / "reports" / "tunegrid.md").read_text()
    assert "tuned on the validation images: 3 trials per cell" in report and "2 of 2 studies finished" in report
    value = winners["output_kd"]["loss.teacher_output.weight"]
    assert f"| output_kd (baseline) | output_kd | `loss.teacher_output.weight`={value:.4g} |" in report

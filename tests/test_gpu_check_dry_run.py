"""The GPU check's CPU dry run (issue 25): benchmarks/gpu_check.sh end to end, as the GPU machines would run it, in
a Python environment that holds only what their image holds, plus the wheels benchmarks/gpu_wheels.sh fetches.

The environment: a fresh venv (this machine's Python) whose site-packages holds symbolic links to exactly the
distributions of benchmarks/gpu_image_packages.txt that this test's own environment has (files and metadata, as
their RECORD lists them); nothing else, so Ray, MLflow, Optuna and spandrel are absent as they are there. (torch,
numpy and the rest are this machine's versions, not the image's: a CPU dry run of the scripts, not of the image.)
A path hook in that venv records every attempt to import one of those four, with the phase that made it: an
attempt outside the availability probes fails the test, even one a phase caught and got past.

Needs the package index (gpu_wheels.sh downloads for this Python; pip's cache makes later runs quick).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE_PACKAGES = REPO / "benchmarks" / "gpu_image_packages.txt"
ABSENT_THERE = ("ray", "mlflow", "optuna", "spandrel")
# the image's distribution -> this machine's for the same role: cv2 in its GUI build; the HTTP client that this
# machine's huggingface-hub (timm imports it) needs under its new names
THIS_MACHINES = {"opencv-python-headless": ("opencv-python",), "httpx": ("httpx2", "truststore"),
                 "httpcore": ("httpcore2",)}
AUDIT = f'''import importlib.abc, os, sys

class Audit(importlib.abc.MetaPathFinder):
    """Records each attempt to import {ABSENT_THERE} (they are absent here: the attempt then fails as usual)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT_THERE!r}:
            with open(os.environ["SDAKD_IMPORT_AUDIT"], "a") as log:
                log.write(f"{{os.environ.get('SDAKD_PHASE', 'outside any phase')}} {{name}}\\n")
        return None

if os.environ.get("SDAKD_IMPORT_AUDIT"):
    sys.meta_path.insert(0, Audit())
'''


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> set[str]:
    lines = [canonical(line) for line in IMAGE_PACKAGES.read_text().splitlines() if line and not line.startswith("#")]
    return {name for line in lines for name in THIS_MACHINES.get(line, (line,))}


def image_like_venv(root: Path) -> tuple[Path, list[str]]:
    """A venv linking the image's distributions from this environment; its python, and the names linked."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    here = Path(sysconfig.get_paths()["purelib"])
    wanted, linked = image_packages(), []
    for dist in importlib.metadata.distributions(path=[str(here)]):
        if canonical(dist.metadata["Name"]) not in wanted:
            continue
        linked.append(canonical(dist.metadata["Name"]))
        for top in {Path(str(f)).parts[0] for f in dist.files or ()} - {".."}:
            if (here / top).exists() and not (site / top).exists():
                (site / top).symlink_to(here / top)
    (site / "sdakd_import_audit.py").write_text(AUDIT)
    (site / "sdakd_import_audit.pth").write_text("import sdakd_import_audit\n")
    return python, sorted(linked)


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_on_the_cpu_without_ray_or_mlflow(tmp_path):
    python, linked = image_like_venv(tmp_path / "venv")
    assert {"torch", "numpy", "pyarrow", "timm", "pip", "pytest"} <= set(linked)
    assert not {"ray", "mlflow", "optuna", "spandrel", "pydantic", "basicsr"} & set(linked)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheels = tmp_path / "wheels"
    subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_wheels.sh"), str(wheels)], check=True,
                   env=os.environ | {"SDAKD_WHEEL_PYTHON": version})
    audit = tmp_path / "imports.txt"
    audit.touch()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")} | {
        "PATH": f"{python.parent}:{os.environ['PATH']}", "VIRTUAL_ENV": str(python.parent.parent),
        "SDAKD_GPU_CHECK_DRY": "1", "SDAKD_WHEELS": str(wheels), "SDAKD_GPU_CHECK_WORK": str(tmp_path / "work"),
        "SDAKD_IMPORT_AUDIT": str(audit), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    summary = (out / "summary.txt").read_text()
    log = (out / "log.txt").read_text()
    print(summary)  # the dry run's summary, in the test's output
    assert done.returncode == 0, f"{summary}\n{log[-6000:]}"
    phases = dict(line.split(": ", 1) for line in summary.splitlines())
    assert phases["install"].startswith("exit 0")
    assert "not importable: ray mlflow optuna spandrel" in phases["environment"]
    assert phases["system-metrics"] == "skipped (needs mlflow, which is not importable here)"
    for name in ("cuda-tests", "train-step", "train-step-compiled", "degrade", "train", "latency", "peer-step"):
        assert phases[name].startswith("exit 0"), (name, phases[name])
    attempts = [line for line in audit.read_text().splitlines() if not line.startswith("probe ")]
    assert not attempts, f"phases tried to import what the GPU machines lack: {attempts}"
    files = sorted(p.name for p in out.iterdir())
    assert files == ["cuda-tests.xml", "figures.json", "log.txt", "sample.png", "summary.txt"], files
    assert all(p.is_file() and p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    figures = json.loads((out / "figures.json").read_text())
    assert set(figures) == {"train-step", "degrade", "train", "latency", "peer-step"}
    assert all(f["dry_run"] is True for f in figures.values())
    assert len([k for k in figures["train-step"] if ":" in k]) == 8  # 2 methods x 4 variants
    assert figures["train"]["student_psnr_y"] > 0 and figures["peer-step"]["ours_over_basicsr"] > 0

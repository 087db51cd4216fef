"""Issue #19: no silent wrong run, no resume under another config, no dataset lost to a failed rebuild, and one
`error:` line (exit 2, no traceback, no torch advice) for every bad file a user can hand over."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import psutil
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
    assert run_cli(capsys, "data", "build", "--images", good, "--out", ds, "--min-side", "32", "--test", "0")[0] == 0
    before = (ds / "manifest.json").read_text()
    code, _, err = run_cli(capsys, "data", "build", "--images", bad, "--out", ds, "--min-side", "32", "--test", "0")
    assert_one_error(code, err, f"{bad / 'a.png'} is not a readable image", "truncated")
    assert (ds / "manifest.json").read_text() == before and load_manifest(ds)["counts"] == {"train": 2, "val": 2, "test": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "good", "trunc"], "no half-built folder left"


def test_a_rebuild_replaces_the_dataset_whole_and_never_others_files(capsys, tmp_path):
    ds = tmp_path / "ds"
    many = write_photos(tmp_path / "many", [f"{i}.png" for i in range(6)])
    assert run_cli(capsys, "data", "build", "--images", many, "--out", ds, "--min-side", "32")[0] == 0
    few = write_photos(tmp_path / "few", ["x.png", "y.png", "z.png"])
    assert run_cli(capsys, "data", "build", "--images", few, "--out", ds, "--min-side", "32", "--test", "0")[0] == 0
    assert load_manifest(ds)["counts"] == {"train": 1, "val": 2, "test": 0}
    code, _, err = run_cli(capsys, "data", "build", "--images", few, "--out", few, "--test", "0")
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


# ---------------------------------------------------------------- 5. divergence is a failed run, not a crash


def test_a_diverged_run_is_one_error_and_a_failed_json(capsys, trained, tmp_path):
    out = tmp_path / "run"
    argv = [*TINY, *stages(2), "--set", "optim.lr_g=1e6", "--set", f"run.cache_dir={trained / 'cache'}",
            "--set", f"run.out_dir={out}"]
    code, _, err = run_cli(capsys, "train", *argv)
    record = json.loads((out / "failed.json").read_text())
    assert code == 1 and err.count("error: ") == 1 and "Traceback" not in err, err
    assert f"error: stage s1 diverged at global step {record['global_step']} (step {record['step_in_stage']} of 2): " \
           "loss/pixel=nan" in err and f"(details: {out / 'failed.json'})" in err, err
    assert record["stage"] == "s1" and record["terms"]["loss/pixel"] == "nan"
    assert record["last_finite_step"] == record["global_step"] - 1 and "loss/pixel" in record["last_finite_losses"]
    assert record["config_hash"] == config_hash(load_config("tiny", overrides=argv[3::2]))
    assert not (out / "metrics.json").exists()


def test_a_blown_up_discriminator_is_a_divergence_unless_unbounded(capsys, trained, tmp_path):
    argv = [*TINY, *stages(2), "--set", "optim.lr_d=1e6", "--set", f"run.cache_dir={trained / 'cache'}"]
    code, _, err = run_cli(capsys, "train", *argv, "--set", f"run.out_dir={tmp_path / 'bounded'}")
    assert code == 1 and "error: stage s2 diverged" in err and "(above run.max_d_loss=10000)" in err, err
    assert "loss/d_total" in json.loads((tmp_path / "bounded" / "failed.json").read_text())["terms"]
    # null lifts the bound: the D losses of ~1e13 pass, as before
    code, _, err = run_cli(capsys, "train", *argv, "--set", f"run.out_dir={tmp_path / 'free'}",
                           "--set", "run.max_d_loss=null")
    assert code == 0 and (tmp_path / "free" / "metrics.json").exists(), err


def test_a_failed_run_carries_its_reason_in_mlflow(small_cfg, small_teacher, tmp_path):
    from mlflow.tracking import MlflowClient

    from sdakd.engine.loop import Diverged
    from sdakd.tracking.run import tracked_run
    from sdakd.tracking.store import Store

    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = store.experiment("reliability")
    parent = store.parent(experiment, "grid", "diverge")
    cfg = small_cfg("method=vanilla")
    engine = Engine(METHODS.get("vanilla")(cfg, small_teacher), synthetic_batches(), device=torch.device("cpu"),
                    lr_g=1e6, lr_d=1e-4, betas=(0.9, 0.99), metadata={"config_hash": config_hash(cfg)})
    with pytest.raises(Diverged) as diverged, tracked_run(store.uri, experiment, parent, "cell", cfg, {}):
        engine.run()
    with pytest.raises(RuntimeError), tracked_run(store.uri, experiment, parent, "crash", cfg, {}):
        raise RuntimeError("out of memory\nmore detail")
    client = MlflowClient(store.uri)
    runs = {r.info.run_name: r for r in client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")}
    cell, crash = runs["cell"], runs["crash"]
    assert cell.info.status == crash.info.status == "FAILED"
    assert cell.data.tags["sdakd.failure"] == diverged.value.record["reason"]
    assert cell.data.tags["sdakd.failure"].startswith("stage s1 diverged at global step")
    saved = json.loads(Path(client.download_artifacts(cell.info.run_id, "failed.json", str(tmp_path))).read_text())
    assert saved == diverged.value.record and saved["config_hash"] == config_hash(cfg)
    assert crash.data.tags["sdakd.failure"] == "RuntimeError: out of memory"


# ---------------------------------------------------------------- 6. no hang, no poisoned search folder


@pytest.mark.parametrize("samples", ["0", "-3"])
def test_fewer_than_one_sample_is_refused_before_ray(capsys, tmp_path, samples):
    code, _, err = run_cli(capsys, "search", "smoke", "--samples", samples, "--set", f"run.out_dir={tmp_path / 's'}")
    assert_one_error(code, err, f"--samples {samples}: a search needs at least 1 trial (--samples >= 1)")
    assert not (tmp_path / "s").exists()


def test_workers_beyond_a_local_ray_fail_before_starting(tmp_path):
    """In its own process: the Ray that `train --workers` starts here (this machine's CPUs) can never grow."""
    argv = [*TINY, *stages(2), "--set", f"run.out_dir={tmp_path / 'run'}", "--set", f"run.cache_dir={tmp_path}",
            "--workers", "64"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "sdakd.cli", "train", *argv], capture_output=True, text=True,
                          timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("error: ") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "error: 64 workers x (1 CPU, 0 GPU) ask for 64 CPUs and 0 GPUs; this Ray has " in done.stderr
    assert "(a local Ray, started for this command: it cannot grow); lower --workers" in done.stderr
    assert "worker group" not in done.stdout + done.stderr and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- 8. `sdakd ui`: a taken port, a clean stop


def test_ui_on_a_taken_port_is_one_error(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(capsys, "ui", "--port", port, "--tracking-uri", tmp_path / "mlflow.db")
    assert_one_error(code, err, f"port {port} on 127.0.0.1 is taken (Address already in use)", "--port")
    assert "MLflow UI" not in out  # no address printed for a server that is not ours


def stop_with_descendants(process: subprocess.Popen) -> None:
    """A failed test's clean-up: the process and everything it started."""
    if process.poll() is None:
        for child in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        process.wait()


def test_sigterm_stops_ui_with_its_server_processes(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ui = subprocess.Popen([sys.executable, "-m", "sdakd.cli", "ui", "--port", str(port), "--tracking-uri",
                           str(tmp_path / "mlflow.db")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:  # up: the server and its HTTP worker process
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and ui.poll() is None, "the UI did not come up"
                time.sleep(0.5)
        server = psutil.Process(ui.pid).children(recursive=True)  # mlflow server and the uvicorn worker it starts
        assert server
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=30) == 0
        assert not [p.pid for p in server if p.is_running()], "server processes outlived `sdakd ui`"
    finally:
        stop_with_descendants(ui)


def test_ctrl_c_ends_the_servers_whole_process_group(tmp_path):
    """Ctrl-C (SIGINT) stops a server started by `run_process_group` (as `sdakd ui` starts mlflow), children too."""
    pid_file = tmp_path / "grandchild.pid"
    server = (f"import subprocess, time; p = subprocess.Popen(['sleep', '600']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(600)")
    runner = f"import sys; from sdakd.tracking.store import run_process_group; " \
             f"sys.exit(run_process_group([sys.executable, '-c', {server!r}]))"
    ui = subprocess.Popen([sys.executable, "-c", runner])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and ui.poll() is None
            time.sleep(0.1)
        below = psutil.Process(ui.pid).children(recursive=True)
        assert int(pid_file.read_text()) in [p.pid for p in below] and len(below) == 2
        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=20) == 0
        assert not [p.pid for p in below if p.is_running()]
    finally:
        stop_with_descendants(ui)


# ---------------------------------------------------------------- 5 and 6 under Ray: searches, grids, worker groups


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.timeout(480)
def test_a_search_over_a_failed_start_runs_and_its_diverged_trial_fails_it(capsys, trained, tmp_path, local_ray):
    from mlflow.tracking import MlflowClient

    out, tracking = tmp_path / "search", f"sqlite:///{tmp_path / 'mlflow.db'}"
    # what a start that stopped before its first trial leaves (`--samples 0` did): Tune's files, no trial
    (out / "tune").mkdir(parents=True)
    (out / "tune" / "tuner.pkl").write_bytes(b"not a tuner")
    (out / "tune" / "experiment_state-2026-11-29_17-43-02.json").write_text('{"trial_data": []}')
    (out / "optuna.db").write_bytes(b"not a study")
    argv = ["--set", f"run.out_dir={out}", "--set", f"run.cache_dir={trained / 'cache'}", "--tracking-uri", tracking]
    code, _, err = run_cli(capsys, "search", "smoke", "--resume", *argv)
    assert_one_error(code, err, f"nothing to resume: {out / 'tune'} holds no trial of a search")

    code, out_text, err = run_cli(capsys, "search", "smoke", "--samples", "1", "--set", "optim.lr_d=1e6", *argv)
    assert code == 1 and f"clearing {out / 'tune'}" in out_text, err
    (trial,) = json.loads((out / "trials.json").read_text())
    assert "diverged at global step" in trial["error"] and "above run.max_d_loss" in trial["error"]
    assert "\n" not in trial["error"] and f"trial {trial['trial_id']} failed: {trial['error']}" in err
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("sdakd-searches").experiment_id])
    (run,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]  # the trial's
    assert run.info.status == "FAILED" and run.data.tags["sdakd.failure"] == trial["error"]
    saved = json.loads(Path(client.download_artifacts(run.info.run_id, "failed.json", str(tmp_path))).read_text())
    assert saved["reason"] == trial["error"] and "loss/d_total" in saved["terms"]


@pytest.mark.timeout(480)
def test_a_diverged_grid_cell_says_a_rerun_diverges_again(capsys, trained, tmp_path, local_ray, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    base = {"method": "vanilla", "data.batch_size": 2, "data.gt_size": 32, "run.eval_max_images": 2,
            "run.latency_repeats": 1, "run.cache_dir": str(trained / "cache"), "stages.s1.iters": 2,
            "stages.s2.iters": 2, "stages.s3.iters": 2}
    (tmp_path / "ablations").mkdir()
    (tmp_path / "ablations" / "hot.yaml").write_text(json.dumps(
        {"base": {"preset": "tiny", "overrides": base}, "cells": {"hot": {"optim.lr_g": 1e6}}}))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, err = run_cli(capsys, "ablate", "hot", "--tracking-uri", tracking)
    assert code == 1, err
    assert "failed: hot-seed0: stage s1 diverged at global step" in out
    assert "so it will diverge again unless the grid changes its config" in out and "failed.json" in out
    client = MlflowClient(tracking)
    (cell,) = client.search_runs([client.get_experiment_by_name("sdakd-ablations").experiment_id],
                                 "tags.`sdakd.cell` = 'hot'")
    assert cell.info.status == "FAILED" and cell.data.tags["sdakd.failure"].startswith("stage s1 diverged")


@pytest.mark.timeout(300)  # before, it retried forever
def test_a_worker_group_that_never_starts_stops_after_max_failures(capsys, trained, tmp_path, local_ray, monkeypatch):
    from sdakd.ray_adapter.train import train_distributed

    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "2")
    cfg = load_config("tiny", overrides=[*TINY[3::2], f"run.cache_dir={trained / 'cache'}", "run.max_failures=1",
                                         f"run.out_dir={tmp_path / 'run'}", f"run.storage_path={tmp_path / 'ray'}"])
    started = time.monotonic()
    with pytest.raises(SdakdError, match=r"Ray Train stopped this run: The worker group startup timed out after 2.0 "
                       r"seconds waiting for 3 workers \(a worker group that does not start is retried "
                       r"run.max_failures=1 times\)"):
        train_distributed(cfg, workers=3)  # 3 CPUs on a Ray of 2: a cluster's autoscaler might add them
    assert time.monotonic() - started < 120
    assert "3 workers x (1 CPU, 0 GPU) ask for 3 CPUs and 0 GPUs; this Ray has 2 CPUs and 0 GPUs: waiting for " \
           "the cluster to grow" in capsys.readouterr().out


# ---------------------------------------------------------------- 3. a grid or space file is itself; 7. no duplicates

CELL_BASE = {"method": "vanilla", "data.batch_size": 2, "data.gt_size": 32, "run.eval_max_images": 2,
             "run.latency_repeats": 1, "stages.s1.iters": 2, "stages.s2.iters": 2, "stages.s3.iters": 2}


def grid_file(path: Path, cache: Path, cells: dict, seeds: tuple[int, ...] = (0,)) -> Path:
    """A tiny vanilla grid (no teacher) at `path`, reading the dataset cached in `cache`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {"preset": "tiny", "overrides": CELL_BASE | {"run.cache_dir": str(cache)}}
    path.write_text(json.dumps({"base": base, "seeds": list(seeds), "cells": cells}))
    return path


def child_runs(client, parent: str) -> dict[str, list]:
    """run name -> the parent's child runs of that name."""
    runs: dict[str, list] = {}
    experiment = client.get_run(parent).info.experiment_id
    for run in client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'"):
        runs.setdefault(run.info.run_name, []).append(run)
    return runs


def test_grid_and_space_files_are_named_by_where_they_are(tmp_path, monkeypatch):
    import shutil

    from sdakd.ablate.grid import load_grid
    from sdakd.config.project import REPO_ROOT
    from sdakd.search.summary import load_named_space, search_folder

    monkeypatch.chdir(tmp_path)
    builtin = REPO_ROOT / "ablations" / "smoke.yaml"
    for copy in ("custom/smoke.yaml", "ablations/smoke.yaml", "ablations/mine.yaml", "mygrid.yaml"):
        (tmp_path / copy).parent.mkdir(exist_ok=True)
        shutil.copy(builtin, tmp_path / copy)
    assert load_grid(str(builtin))[0].name == "smoke"  # the built-in, by path, keeps its name
    assert load_grid("mine")[0].name == "mine"  # the working directory's named grid of a name no built-in has
    custom = {load_grid(spelling)[0].name for spelling in
              ("custom/smoke.yaml", "./custom/smoke.yaml", str(tmp_path / "custom" / "smoke.yaml"))}
    shadow = load_grid("smoke")[0].name  # ablations/smoke.yaml here shadows the built-in: it is not the built-in
    mine = load_grid("./mygrid.yaml")[0].name
    assert len(custom) == 1 and len({*custom, shadow, "smoke"}) == 3
    for name, stem in ((*custom, "smoke"), (shadow, "smoke"), (mine, "mygrid")):
        assert name.startswith(f"{stem}-") and len(name) == len(stem) + 9 and int(name[-8:], 16) >= 0

    shutil.copy(REPO_ROOT / "search_spaces" / "smoke.yaml", tmp_path / "custom" / "space.yaml")
    shutil.copy(REPO_ROOT / "search_spaces" / "smoke.yaml", tmp_path / "smoke.yaml")
    named, own = load_named_space("smoke"), load_named_space("smoke.yaml")
    assert named[0].name == "smoke" and search_folder(*named) == tmp_path / "runs" / "search-smoke"
    assert own[0].name.startswith("smoke-") and search_folder(*own) == tmp_path / "runs" / f"search-{own[0].name}"
    assert load_named_space("custom/space.yaml")[0].name.startswith("space-")

    (tmp_path / "custom" / "named.yaml").write_text(builtin.read_text() + "name: smoke\n")
    with pytest.raises(SdakdError, match=r"ablation grid custom/named.yaml: name: 'smoke' cannot be set; a "
                       r"ablation grid is named by its file \(named\)"):
        load_grid("custom/named.yaml")


def test_a_seed_listed_twice_is_one_error(capsys, tmp_path, monkeypatch):
    from sdakd.config.project import REPO_ROOT

    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "ablate", "smoke", "--seeds", "0,0")
    assert_one_error(code, err, "--seeds 0,0: seed 0 is listed more than once; list each seed once")
    grid = read_yaml(REPO_ROOT / "ablations" / "smoke.yaml") | {"seeds": [1, 2, 1]}
    (tmp_path / "twice.yaml").write_text(json.dumps(grid))
    code, _, err = run_cli(capsys, "ablate", "twice.yaml")
    assert_one_error(code, err, "ablation grid twice.yaml: seeds: seed 1 is listed more than once")
    assert not [p.name for p in tmp_path.iterdir() if p.name != "twice.yaml"]  # no store, no run folder


@pytest.mark.timeout(180)
def test_a_second_driver_waits_for_a_locked_cell_and_fails_only_abandoned_runs(capsys, tmp_path, monkeypatch):
    """The test holds the locks a first driver would: `ablate` waits, then skips the cell that driver finished; a
    RUNNING run whose lock nobody holds is failed with its reason, one whose lock is held is left alone."""
    import threading

    from sdakd.ablate.grid import EXPERIMENT, load_grid
    from sdakd.ray_adapter.ablate import ablate
    from sdakd.tracking.cell_locks import CellLocks, lock_folder
    from sdakd.tracking.run import start_child_run
    from sdakd.tracking.store import CONFIG_HASH, Store

    monkeypatch.chdir(tmp_path)
    path = grid_file(tmp_path / "grid.yaml", tmp_path / "cache", {"only": {}}, seeds=(9,))
    grid, (cell,) = load_grid(str(path))
    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = store.experiment(EXPERIMENT)
    parent = store.parent(experiment, "grid", grid.name)
    first_driver = CellLocks(lock_folder(store.uri))
    runs = {}
    for name, key in ((cell.run_name, cell.hash), ("alive", "feedface0001"), ("abandoned", "feedface0002")):
        runs[name] = start_child_run(store.client, experiment, parent, name, cell.cfg, {CONFIG_HASH: key}).run_id
    assert first_driver.take(cell.hash, block=False) and first_driver.take("feedface0001", block=False)

    done = {}
    second = threading.Thread(target=lambda: done.update(ok=ablate(str(path), uri=store.uri)))
    second.start()
    out, deadline = "", time.monotonic() + 60
    while "another driver is training this cell" not in out:
        assert time.monotonic() < deadline and second.is_alive(), out
        time.sleep(0.2)
        out += capsys.readouterr().out
    assert store.client.get_run(runs[cell.run_name]).info.status == "RUNNING"  # its driver lives: left alone
    store.client.set_terminated(runs[cell.run_name], "FINISHED")  # the first driver finishes the cell
    first_driver.release(cell.hash)
    second.join(timeout=120)
    out += capsys.readouterr().out
    assert done == {"ok": True}, out
    assert f"grid {grid.name} ({path}): 1 runs, 1 already finished, 0 to run" in out
    found = child_runs(store.client, parent)
    assert [r.info.status for r in found[cell.run_name]] == ["FINISHED"]  # waited, then skipped: no duplicate
    assert found["alive"][0].info.status == "RUNNING"
    (abandoned,) = found["abandoned"]
    reason = abandoned.data.tags["sdakd.failure"]
    assert abandoned.info.status == "FAILED" and reason.startswith("its driver is gone: the run was RUNNING while no "
                                                                   "process held its cell lock")
    assert str(lock_folder(store.uri) / "feedface0002.lock") in reason and f"abandoned: {reason}" in out
    first_driver.release_all()
    store.client.set_terminated(runs["alive"])  # its system-metrics sampler stops with it


@pytest.mark.timeout(480)
def test_a_grid_file_runs_reports_and_dedupes_as_itself(capsys, trained, tmp_path, local_ray, monkeypatch):
    """custom/smoke.yaml, passed by path: not the built-in smoke (whose parent already has this config finished),
    its own parent (where power loss left the cell RUNNING), its own report; the abandoned run is failed and the
    cell trained once."""
    from mlflow.tracking import MlflowClient

    from sdakd.ablate.grid import EXPERIMENT, load_grid
    from sdakd.tracking.run import start_child_run
    from sdakd.tracking.store import Store

    monkeypatch.chdir(tmp_path)
    grid_file(tmp_path / "custom" / "smoke.yaml", trained / "cache", {"custom_cell": {"optim.lr_g": 1e-3}})
    grid, (cell,) = load_grid("./custom/smoke.yaml")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = Store(tracking)
    experiment = store.experiment(EXPERIMENT)
    builtin = store.parent(experiment, "grid", "smoke")
    store.client.set_terminated(start_child_run(store.client, experiment, builtin, cell.run_name, cell.cfg).run_id)
    mine = store.parent(experiment, "grid", grid.name)
    abandoned = start_child_run(store.client, experiment, mine, cell.run_name, cell.cfg).run_id  # stays RUNNING

    code, out, err = run_cli(capsys, "ablate", "./custom/smoke.yaml", "--tracking-uri", tracking)
    assert code == 0, err
    assert f"grid {grid.name} (./custom/smoke.yaml): 1 runs, 0 already finished, 1 to run" in out
    client = MlflowClient(tracking)
    runs = {r.info.run_id: r for r in child_runs(client, mine)[cell.run_name]}
    assert runs.pop(abandoned).data.tags["sdakd.failure"].startswith("its driver is gone")
    (trained_run,) = runs.values()
    assert trained_run.info.status == "FINISHED" and trained_run.data.tags["sdakd.config_hash"] == cell.hash
    assert [len(v) for v in child_runs(client, builtin).values()] == [1]
    assert (tmp_path / "runs" / "ablate" / grid.name / f"{cell.run_name}-{cell.hash}" / "metrics.json").is_file()
    report = (tmp_path / "reports" / f"{grid.name}.md").read_text()
    assert "custom_cell" in report and "no_fm" not in report and not (tmp_path / "reports" / "smoke.md").exists()

    code, out, err = run_cli(capsys, "report", "custom/smoke.yaml", "--tracking-uri", tracking)
    assert code == 0 and "custom_cell" in out and "no_fm" not in out, err
    code, out, err = run_cli(capsys, "ablate", str(tmp_path / "custom" / "smoke.yaml"), "--tracking-uri", tracking)
    assert code == 0 and "1 runs, 1 already finished, 0 to run" in out, err


@pytest.mark.timeout(480)
def test_a_space_file_searches_and_reports_as_itself(capsys, trained, tmp_path, local_ray, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    space = {"base": {"preset": "tiny", "overrides": CELL_BASE | {"run.cache_dir": str(trained / "cache")}},
             "parameters": {"optim.lr_g": {"type": "choice", "values": [1e-3, 2e-3]}},
             "objectives": [{"metric": "psnr_y", "mode": "max"}], "scheduler": None, "samples": 1}
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "smoke.yaml").write_text(json.dumps(space))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, err = run_cli(capsys, "search", "./custom/smoke.yaml", "--tracking-uri", tracking)
    assert code == 0, err
    (folder,) = (tmp_path / "runs").iterdir()  # its own folder, not the built-in's runs/search-smoke
    name = folder.name.removeprefix("search-")
    assert name.startswith("smoke-") and len(json.loads((folder / "trials.json").read_text())) == 1
    client = MlflowClient(tracking)
    (parent,) = client.search_runs([client.get_experiment_by_name("sdakd-searches").experiment_id],
                                   "tags.`sdakd.role` = 'search'")
    assert parent.data.tags["sdakd.group"] == str(folder / "tune")

    code, out, err = run_cli(capsys, "report", "custom/smoke.yaml")  # no --search: the file is a space
    assert code == 0 and f"best trial of search {name} (max psnr_y); 1 trials, 1 finished" in out, err
    code, _, err = run_cli(capsys, "search", "custom/smoke.yaml", "--tracking-uri", tracking)
    assert_one_error(code, err, f"{folder / 'tune'} already holds a search: add --resume")

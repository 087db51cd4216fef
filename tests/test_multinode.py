"""A real multi-node Ray cluster on this machine: a head (no CPUs, so no work lands on it) and worker nodes, each a
`ray start` of its own with cluster.yaml's settings (token auth, no metrics exporter), all on 127.0.0.1. Nodes are
lost the way a reclaimed machine is (the raylet and every process on it killed at once) and replaced the way an
autoscaler would (a fresh `ray start`).

One cluster serves the module, and the tests run in file order on it: the nodes each test kills and adds are said
in its docstring. Each run is 7 steps (stages 2/3/2) with a checkpoint after every step.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient
from ray._private.authentication_test_utils import reset_auth_token_state  # Ray's own test helper

from local_processes import BIN, LocalCluster, cluster_env
from test_distributed import SETS as SEVEN_STEPS
from sdakd.cli import main
from sdakd.config.load import load_config, with_overrides
from sdakd.errors import SdakdError
from sdakd.teacher.cache import prepare_inputs

pytestmark = pytest.mark.slow

SETS = [*SEVEN_STEPS, "data.batch_size=2"]  # stages 2/3/2, a checkpoint every step
NODE_CPUS = 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("multinode")


@pytest.fixture(scope="module")
def cluster(workdir):
    """Head + node_a + node_b (2 CPUs each); this test process joins it as a driver, with the cluster's token."""
    assert not ray.is_initialized(), "another module left its Ray running"
    env = cluster_env()
    nodes = LocalCluster(workdir, env)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
                patch.setenv(key, env[key])
            patch.delenv("RAY_ADDRESS", raising=False)
            reset_auth_token_state()  # Ray reads its auth settings once per process: read them again
            try:
                nodes.start_head()
                ray.init(address=nodes.address, configure_logging=False)
                nodes.add("node_a", NODE_CPUS)
                nodes.add("node_b", NODE_CPUS)
                yield nodes
            finally:
                ray.shutdown()
                nodes.stop()
    finally:
        reset_auth_token_state()  # the next module's local Ray runs without a token


@pytest.fixture(scope="module")
def cache(workdir):
    """The dataset and the pretrained teacher, built once here: every run after only reads them."""
    folder = workdir / "cache"
    prepare_inputs(load_config("tiny", overrides=[*SETS, f"run.cache_dir={folder}"]), torch.device("cpu"))
    return folder


def sets(workdir, cache, name):
    storage = workdir / f"ray-{name}"
    return [*SETS, f"run.cache_dir={cache}", f"run.out_dir={workdir / name}", f"run.storage_path={storage}"]


def student(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "student.pt", weights_only=True)


def node_id(name: str) -> str:
    (found,) = [n["NodeID"] for n in ray.nodes() if n["Alive"] and name in n["Resources"]]
    return found


def wait_until(condition, running, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert running(), f"the run ended before {what}"
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.2)


def train_checkpoints(storage: Path) -> list[int]:
    """The global steps of the checkpoints Ray Train has registered for the one run in `storage`. A checkpoint a
    worker has written but the controller not yet polled is lost with the worker: a test that kills a node waits
    for a registered one."""
    snapshots = list(storage.glob("*/checkpoint_manager_snapshot.json"))
    if not snapshots:
        return []
    try:
        results = json.loads(snapshots[0].read_text())["checkpoint_results"]
    except (json.JSONDecodeError, KeyError):  # caught mid-write
        return []
    return [r["metrics"]["global_step"] for r in results]


@pytest.fixture(scope="module")
def packed(cluster, cache, workdir):
    """`sdakd train --workers 2` without --spread: both workers on one node."""
    args = [f"--set={text}" for text in sets(workdir, cache, "packed")]
    assert main(["train", "--preset", "tiny", *args, "--workers", "2"]) == 0
    return workdir / "packed"


@pytest.mark.timeout(900)
def test_spread_workers_run_ddp_across_nodes_survive_a_lost_node_and_equal_one_node(cluster, cache, workdir, packed):
    """node_a is lost after stage 1 and node_c replaces it: the run goes on from its last checkpoint, its two
    workers again on two nodes, and its student equals that of the 2-worker run on one node, bit for bit."""
    run_dir = workdir / "spread"
    command = [str(BIN / "sdakd"), "train", "--preset", "tiny", *[f"--set={t}" for t in sets(workdir, cache, "spread")],
               "--workers", "2", "--spread"]
    log = workdir / "spread.log"
    env = cluster.env | {"RAY_ADDRESS": cluster.address}
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: max(train_checkpoints(workdir / "ray-spread"), default=0) >= 3,
                   lambda: process.poll() is None, "a checkpoint in stage 2")
        lost, reached = node_id("node_a"), max(train_checkpoints(workdir / "ray-spread"))
        lost_at = time.monotonic()
        cluster.kill("node_a")
        noticed = time.monotonic()
        cluster.add("node_c", NODE_CPUS)
        joined = time.monotonic()
        # training again: a checkpoint past the last one registered before the loss
        wait_until(lambda: max(train_checkpoints(workdir / "ray-spread"), default=0) > reached,
                   lambda: process.poll() is None, "a checkpoint after the loss")
        again = time.monotonic()
        assert process.wait(timeout=600) == 0, log.read_text()[-6000:]
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    info = json.loads((run_dir / "metrics.json").read_text())["info"]
    assert info["ranks_agree"] and len(set(info["nodes"])) == 2  # DDP over gloo between two nodes
    assert lost not in info["nodes"] and node_id("node_c") in info["nodes"]  # the last group ran on the new node
    assert "resumed from" in text and "at global step" in text, text[-6000:]  # from its checkpoint, not step 0
    packed_info = json.loads((packed / "metrics.json").read_text())["info"]
    assert len(set(packed_info["nodes"])) == 1
    one_node = student(packed)
    for key, value in student(run_dir).items():
        assert torch.equal(value, one_node[key]), key
    print(f"node loss: noticed after {noticed - lost_at:.1f} s, replacement joined after {joined - lost_at:.1f} s, "
          f"a new checkpoint after {again - lost_at:.1f} s")


@pytest.mark.timeout(300)
def test_with_no_node_to_spread_over_the_run_fails_in_bounded_time_naming_what_is_missing(
    cluster, cache, workdir, monkeypatch
):
    """node_c is lost and nothing replaces it: node_b alone cannot hold two spread workers."""
    from sdakd.ray_adapter.train import train_distributed

    cluster.kill("node_c")
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "5")  # Ray Train hands it to its controller
    cfg = load_config("tiny", overrides=[*sets(workdir, cache, "stranded"), "run.max_failures=1"])
    started = time.monotonic()
    with pytest.raises(SdakdError) as failed:
        train_distributed(cfg, workers=2, spread=True)
    waited = time.monotonic() - started
    message = str(failed.value)
    assert "The worker group startup timed out after 5.0 seconds waiting for 2 workers" in message, message
    assert "asked: 2 workers x {'CPU': 1} on separate nodes" in message, message
    assert "node_b: 1" in message and "node_c" not in message, message  # what is left: one node of 2 CPUs
    assert waited < 120, waited
    print(f"no node: failed after {waited:.0f} s: {message}")


def losing_a_node(cluster, argv: list[str], ready, lost: str, replacement: str, capsys) -> str:
    """`sdakd argv` in this process; once `ready()`, node `lost` is killed and `replacement` started. Returns what
    the command printed, once it has succeeded."""
    outcome = {}
    command = threading.Thread(target=lambda: outcome.update(code=main(argv)))
    command.start()
    wait_until(ready, command.is_alive, f"{argv[0]} to checkpoint")
    cluster.kill(lost)
    cluster.add(replacement, NODE_CPUS)
    command.join(timeout=600)
    printed = capsys.readouterr().out
    assert outcome.get("code") == 0, printed[-6000:]
    return printed


def grid(tmp_path: Path, cache: Path) -> str:
    overrides = {key: yaml.safe_load(value) for key, value in (text.split("=", 1) for text in SETS)}
    overrides |= {"run.cache_dir": str(cache), "method": "sdakd"}
    (tmp_path / "ablations").mkdir()
    (tmp_path / "ablations" / "lost.yaml").write_text(json.dumps(
        {"base": {"preset": "tiny", "overrides": overrides}, "cells": {"full": {}}}))
    return "lost"


@pytest.mark.timeout(900)
def test_a_grid_cell_on_a_lost_node_resumes_on_a_new_one_as_one_run_equal_to_an_uninterrupted_one(
    cluster, cache, tmp_path, monkeypatch, capsys
):
    """node_b, the one node left with CPUs, is lost during the cell; node_d replaces it."""
    from sdakd.ablate.grid import load_grid
    from sdakd.pipeline import train

    monkeypatch.chdir(tmp_path)
    name, tracking = grid(tmp_path, cache), f"sqlite:///{tmp_path / 'mlflow.db'}"
    (cell,) = load_grid(name)[1]
    out = tmp_path / "runs" / "ablate" / "lost" / f"{cell.run_name}-{cell.hash}"
    tune_storage = tmp_path / "runs" / "ablate" / "lost" / "tune"
    # Tune has taken the cell's first checkpoint once the cell reports its second (a report waits for the driver)
    ready = lambda: any(tune_storage.glob("*/*/checkpoint_00000[2-9]"))  # noqa: E731
    printed = losing_a_node(cluster, ["ablate", name, "--tracking-uri", tracking], ready, "node_b", "node_d", capsys)
    assert "failed (" in printed and "retry 1 of 2 (run.max_failures), from its last checkpoint" in printed

    client = MlflowClient(tracking)
    (run,) = client.search_runs([client.get_experiment_by_name("sdakd-ablations").experiment_id],
                                "tags.`sdakd.cell` = 'full'")  # one run, not one per attempt
    assert run.info.status == "FINISHED" and run.data.tags["sdakd.retries"] == "1", run.data.tags
    assert run.data.tags["sdakd.retries.1"], run.data.tags

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the cell ran
    try:
        reference = train(with_overrides(cell.cfg, {"run.out_dir": str(tmp_path / "reference")}))
    finally:
        torch.set_num_threads(threads)
    uninterrupted = student(reference.out_dir)
    for key, value in student(out).items():
        assert torch.equal(value, uninterrupted[key]), key


@pytest.mark.timeout(900)
def test_a_search_trial_on_a_lost_node_resumes_on_a_new_one_reporting_what_an_uninterrupted_one_does(
    cluster, cache, tmp_path, monkeypatch, capsys
):
    """node_d, the one node left with CPUs, is lost during the trial's stage 3; node_e replaces it."""
    import optuna

    from sdakd.experiment import Placement
    from sdakd.search.space import OBJECTIVE_METRICS, Suggest
    from sdakd.search.summary import load_named_space
    from sdakd.search.trial import run_trial

    monkeypatch.chdir(tmp_path)
    overrides = {key: yaml.safe_load(value) for key, value in (text.split("=", 1) for text in SETS)}
    space = {"base": {"preset": "tiny", "overrides": overrides | {"run.cache_dir": str(cache)}},
             "parameters": {"optim.lr_g": {"type": "choice", "values": [5e-4, 1e-3]}},
             "objectives": [{"metric": "psnr_y", "mode": "max"}], "scheduler": None, "samples": 1,
             "prefix_cache": False}
    (tmp_path / "lost.yaml").write_text(json.dumps(space))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # stage 2's checkpoint is being reported: stage 1's is Tune's (a report waits for the driver)
    ready = lambda: any(tmp_path.glob("runs/*/tune/*/checkpoint_000001"))  # noqa: E731
    printed = losing_a_node(cluster, ["search", "./lost.yaml", "--tracking-uri", tracking], ready, "node_d", "node_e",
                            capsys)
    assert "retry 1 of 2 (run.max_failures), from its last checkpoint" in printed, printed[-6000:]

    (folder,) = (tmp_path / "runs").iterdir()
    (trial,) = json.loads((folder / "trials.json").read_text())
    named, base = load_named_space("./lost.yaml")
    study = optuna.load_study(study_name=named.name, storage=f"sqlite:///{folder / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]  # the trial once, not once per attempt
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("sdakd-searches").experiment_id],
                              "tags.`sdakd.ray_trial_id` != ''")
    (run,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert run.info.status == "FINISHED" and run.data.tags["sdakd.retries"] == "1", run.data.tags

    cfg = with_overrides(base, Suggest.overrides(trial["config"]) | {"run.out_dir": str(tmp_path / "reference")})
    reports = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial ran
    try:
        run_trial(cfg, lambda metrics, _: reports.append(metrics), prefix_cache=False,
                  placement=Placement(device=torch.device("cpu")))
    finally:
        torch.set_num_threads(threads)
    scores = {k: v for k, v in trial["metrics"].items() if k in OBJECTIVE_METRICS and v is not None}
    assert {"psnr_y", "ssim_y", "psnr_y_vs_teacher"} <= scores.keys() and trial["final"], trial
    assert scores == {k: reports[-1][k] for k in scores}  # bit for bit: == on floats

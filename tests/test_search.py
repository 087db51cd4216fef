"""`sdakd search`: bad spaces fail before Ray starts; the stage-prefix cache is exact; the smoke search runs with
ASHA stopping trials; a killed driver resumes to the requested trial count without duplicates.

One local Ray instance for the module (2 CPUs, no dashboard) and one cache folder, so the smoke teacher is
pretrained once; the subprocess driver of the kill test joins the same instance through RAY_ADDRESS.
"""

import json
import os
import signal
import subprocess
import sys
import time

from pathlib import Path

import optuna
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray.util import placement_group_table

from sdakd.cli import main
from sdakd.config.load import load_config, with_overrides
from sdakd.engine.checkpoint import load_checkpoint
from sdakd.tracking.store import Store
from sdakd.search.prefix import PrefixCache, stage_key
from sdakd.ray_adapter.search import _searcher
from sdakd.search.space import Constraint
from sdakd.search.summary import TrialRow, pareto_front, summarize
from sdakd.tracking.search import EXPERIMENT, ROLE
from sdakd.search.space import load_space
from sdakd.search.trial import key_context, run_trial

SMOKE_TRIALS = 6


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("search-cache")


@pytest.fixture(scope="module", autouse=True)
def tracking(tmp_path_factory):
    """Searches log to MLflow: to a store of this module's, not the working directory's mlflow.db."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SDAKD_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=True)  # the State API frees stopped trials' workers
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def search_args(out, cache, *extra):
    return ["search", "smoke", "--set", f"run.out_dir={out}", "--set", f"run.cache_dir={cache}", *extra]


def read_trials(out):
    return json.loads((out / "trials.json").read_text())


# ---------------------------------------------------------------- bad input, before any compute

SPACE = """
base: {{preset: tiny}}
parameters:
  {param}
objectives: [{{metric: psnr_y, mode: max}}]
samples: 2
"""


@pytest.mark.parametrize(
    "param, needles",
    [
        ("loss.foo.weight: {type: uniform, low: 0.1, high: 1.0}", ["parameters.loss.foo.weight", "unknown field"]),
        ("loss.gan.weight: {type: uniform, low: 1.0, high: 1.0}", ["empty range", "low (1.0) must be below high"]),
        ("loss.gan.weight: {type: loguniform, low: 0.0, high: 1.0}", ["Optuna cannot represent", "loguniform"]),
        ("loss.gan.weight: {type: gauss, low: 0.0, high: 1.0}", ["gauss", "'uniform', 'loguniform', 'int', 'choice'"]),
        ("student_d.width: {type: choice, values: [0.5, 2.0]}", ["student_d.width = 2.0", "less than or equal to 1"]),
    ],
)
def test_bad_space_fails_before_ray(tmp_path, capsys, param, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(SPACE.format(param=param))
    code = main(["search", str(path), "--set", f"run.cache_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and str(path) in err, err
    for needle in needles:
        assert needle in err, err
    assert not ray.is_initialized() and not (tmp_path / "data").exists()


def test_unknown_space_lists_the_known_ones(capsys):
    assert main(["search", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown search space 'nope'" in err and "smoke" in err and "sdakd_core" in err and "pareto" in err


def test_shipped_spaces_load():
    for name in ("smoke", "sdakd_core", "pareto"):
        space, _ = load_space(name)
        assert space.samples >= 1
    assert [o.mode for o in load_space("pareto")[0].objectives] == ["max", "min"]


def test_pareto_front_keeps_the_trials_nothing_beats_on_both_objectives():
    space, _ = load_space("pareto")
    trials = [{"name": n, "metrics": {"psnr_y": p, "macs": m}} for n, p, m in
              [("big", 28.0, 9e8), ("small", 26.0, 1e8), ("worse", 25.0, 5e8), ("tie", 26.0, 1e8), ("mid", 27.0, 4e8)]]
    assert [t["name"] for t in pareto_front(space, trials)] == ["big", "mid", "small", "tie"]


# ---------------------------------------------------------------- the stage-prefix cache (no Ray)


def test_prefix_cache_trains_stage_1_once_and_exactly(cache, tmp_path):
    # stages.s1.iters=5 keeps these keys apart from the searches' (which run 6)
    space, base = load_space("smoke", [f"run.cache_dir={cache}", "stages.s1.iters=5"])
    torch.set_num_threads(1)

    def trial(name, prefix_cache=True, **changes):
        reports = []
        cfg = with_overrides(base, {"run.out_dir": str(tmp_path / name), **changes})
        exp = run_trial(cfg, lambda metrics, _: reports.append(metrics), prefix_cache=prefix_cache)
        return exp, {r["stage"]: r for r in reports}

    first, first_reports = trial("a", **{"loss.gan.weight": 0.01})
    assert first_reports["s1"]["trained_iters"] == 5 and first_reports["s1"]["prefix_stages"] == 0
    # loss.gan.weight first acts in stage 3: the second trial loads stages 1-2 instead of training them
    second, second_reports = trial("b", **{"loss.gan.weight": 0.05})
    assert second_reports["s1"]["trained_iters"] == 0 and second_reports["s3"]["prefix_stages"] == 2
    assert second_reports["s1"]["psnr_y"] == first_reports["s1"]["psnr_y"]
    # ...and ends exactly where training it from scratch ends: the key left out nothing that matters
    fresh, _ = trial("c", prefix_cache=False, **{"loss.gan.weight": 0.05})
    s1_fresh = load_checkpoint(tmp_path / "c" / "checkpoints" / "s1.pt")["nets"]["student_g"]
    s1_key = stage_key(second.cfg, second.method, 0, key_context(second))
    s1_cached = load_checkpoint(PrefixCache(cache).path(s1_key))["nets"]["student_g"]
    assert all(torch.equal(s1_fresh[k], s1_cached[k]) for k in s1_fresh)
    for name in ("student_g", "d", "adapters"):
        a, b = (exp.method.nets[name].state_dict() for exp in (second, fresh))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # a stage-1 field differs: nothing is loaded
    _, other_reports = trial("d", **{"loss.pixel.weight": 2.0})
    assert other_reports["s1"]["trained_iters"] == 5 and other_reports["s3"]["prefix_stages"] == 0


# ---------------------------------------------------------------- Ray Tune


@pytest.mark.timeout(420)
def test_smoke_search_stops_some_trials_and_writes_a_trainable_best(cluster, cache, tracking, tmp_path, capsys):
    out = tmp_path / "smoke"
    started = time.monotonic()
    assert main(search_args(out, cache)) == 0
    printed = capsys.readouterr().out
    trials = read_trials(out)
    assert len(trials) >= SMOKE_TRIALS and not any(t["error"] for t in trials), printed
    stopped = [t for t in trials if not t["final"]]
    assert stopped and all(t["metrics"]["stage"] in ("s1", "s2") for t in stopped), printed
    assert "from the prefix cache" in printed
    best = load_config(path=out / "pareto" / "0.yaml")  # what `sdakd train --config pareto/0.yaml` loads
    assert best.optim.lr_g in (1e-5, 5e-4, 2e-3) and best.run.out_dir is None
    # stopped trials gave their resources back: no placement group is left holding CPUs
    deadline = time.monotonic() + 30
    while any(pg["state"] != "REMOVED" for pg in placement_group_table().values()) and time.monotonic() < deadline:
        time.sleep(1)
    assert all(pg["state"] == "REMOVED" for pg in placement_group_table().values())
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{out / 'optuna.db'}")
    assert len(study.trials) == len(trials)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # MLflow: the search's parent run and one child run per trial, ended as the trial ended
    client = MlflowClient(tracking_uri=tracking)
    parent = Store(tracking).find_parent(EXPERIMENT, ROLE, str(out / "tune"))
    assert client.get_run(parent).info.status == "FINISHED"
    top = {a.path for a in client.list_artifacts(parent)}
    assert top == {"trials.json", "best.md", "pareto", "plots"}
    pareto = [a.path for a in client.list_artifacts(parent, "pareto")]
    assert pareto and all(p.startswith("pareto/") and p.endswith(".yaml") for p in pareto)
    # the search's own Optuna study, drawn: four non-empty PNGs read back from the tracking store
    plots = {a.path for a in client.list_artifacts(parent, "plots")}
    expected = {f"plots/{name}.png" for name in
                ("optimization_history", "param_importances", "parallel_coordinate", "pareto_front")}
    assert plots == expected, plots
    for path in sorted(plots):
        data = Path(client.download_artifacts(parent, path, str(tmp_path))).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, path
    table = Path(client.download_artifacts(parent, "best.md", str(tmp_path))).read_text()
    assert table.startswith("Pareto set of search smoke (max psnr_y, max psnr_y_vs_teacher)")
    capsys.readouterr()
    assert main(["report", "--search", "smoke", "--set", f"run.out_dir={out}"]) == 0
    assert capsys.readouterr().out.startswith(table.splitlines()[0])
    experiment_id = client.get_run(parent).info.experiment_id
    children = client.search_runs([experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'")
    by_trial = {r.data.tags["sdakd.ray_trial_id"]: r for r in children}
    assert set(by_trial) == {t["trial_id"] for t in trials}
    for trial in trials:
        run = by_trial[trial["trial_id"]]
        assert run.info.status == ("FINISHED" if trial["final"] else "KILLED")
        assert run.data.params["optim.lr_g"] == str(trial["config"]["optim.lr_g"])
        assert run.data.metrics["eval/psnr_y"] == pytest.approx(trial["metrics"]["psnr_y"])
        stages = client.get_metric_history(run.info.run_id, "eval/psnr_y")
        assert [m.step for m in stages] == list(range(1, len(stages) + 1))
        pictures = [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
        assert pictures == (["plots/samples.png"] if trial["final"] else [])
    print(f"smoke search: {time.monotonic() - started:.0f} s, {len(stopped)} of {len(trials)} stopped by ASHA")


def test_resumed_trial_may_report_to_an_optuna_trial_the_killed_driver_finished(tmp_path):
    space, _ = load_space("smoke")
    space = space.model_copy(update={"objectives": space.objectives[:1]})  # one objective: one value to tell
    searcher = _searcher(space, f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher.suggest("t1")
    searcher._ot_study.tell(0, 27.0)  # the killed driver's tell, after the snapshot --resume restores
    searcher.on_trial_result("t1", {"psnr_y": 26.5, "training_iteration": 1})  # the re-run trial reports again
    assert searcher._ot_study.trials[0].value == 27.0


def test_constraints_reach_optuna_and_decide_the_best_config(tmp_path):
    space, base = load_space("smoke")
    limit = Constraint(metric="psnr_y_vs_teacher", min=30.0)
    space = space.model_copy(update={"objectives": space.objectives[:1], "constraints": [limit]})
    searcher = _searcher(space, f"sqlite:///{tmp_path / 'optuna.db'}")
    results = {"ok": {"psnr_y": 26.0, "psnr_y_vs_teacher": 31.0}, "bad": {"psnr_y": 28.0, "psnr_y_vs_teacher": 29.5}}
    configs = {name: searcher.suggest(name) for name in results}
    for name, result in results.items():
        searcher.on_trial_complete(name, result)
    ok, bad = searcher._ot_study.trials
    # on Optuna's own trials, where its samplers read them (<= 0: feasible)
    assert ok.system_attrs["constraints:0:psnr_y_vs_teacher"] == -1.0
    assert bad.system_attrs["constraints:0:psnr_y_vs_teacher"] == 0.5
    rows = [TrialRow(name, configs[name], results[name] | {"final": True}, None) for name in results]
    summary = summarize(space, base, tmp_path, rows)
    assert [t["trial_id"] for t in summary.best] == ["ok"]  # the higher-scoring trial breaks the constraint
    assert [t["feasible"] for t in summary.trials] == [True, False]


@pytest.mark.timeout(480)
def test_killed_driver_resumes_to_the_requested_trials(cluster, cache, tmp_path):
    out, requested = tmp_path / "killed", 3
    # stages.s1.iters=7: new prefixes, so trials really train while the driver is killed
    args = search_args(out, cache, "--samples", str(requested), "--set", "stages.s1.iters=7")
    env = dict(os.environ, RAY_ADDRESS=cluster)
    driver = subprocess.Popen(
        [sys.executable, "-m", "sdakd.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    for line in driver.stdout:
        seen.append(line)
        if line.startswith("trial ") and line.rstrip().endswith("finished"):  # the first trial is done
            driver.send_signal(signal.SIGKILL)
            break
    driver.wait(timeout=60)
    assert driver.returncode == -signal.SIGKILL, "".join(seen[-30:])
    assert not (out / "trials.json").exists()

    assert main(["search", "smoke", "--resume", "--set", f"run.out_dir={out}", "--set", f"run.cache_dir={cache}",
                 "--set", "stages.s1.iters=7"]) == 0
    trials = read_trials(out)
    assert len(trials) == requested and not any(t["error"] for t in trials)
    assert len({t["trial_id"] for t in trials}) == requested
    numbers = {t["config"]["optuna_trial"] for t in trials}
    assert len(numbers) == requested
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{out / 'optuna.db'}")
    for trial in study.trials:  # each Tune trial once; what the killed driver asked for beyond them is closed
        expected = optuna.trial.TrialState.COMPLETE if trial.number in numbers else optuna.trial.TrialState.FAIL
        assert trial.state == expected, (trial.number, trial.state)


NESTED = """
description: multi-worker trials (2 Ray Train workers each) on the smoke base
base:
  preset: tiny
  overrides: {overrides}
parameters:
  optim.lr_g: {{type: choice, values: [5.0e-4, 2.0e-3, 1.0e-5]}}  # seed 0 draws 2e-3, then 1e-5 (ASHA stops it)
objectives: [{{metric: psnr_y, mode: max}}]
sampler: {{seed: 0}}
scheduler: {{type: asha, grace_period: 1, reduction_factor: 2, max_t: 3}}
samples: 3
concurrency: 1
resources: {{cpu: 0.95, workers: 2}}  # 2 x 0.95 + the trial function's 0.01: all of the 2 CPUs
"""


@pytest.mark.timeout(480)
def test_multi_worker_trials_report_through_ray_train_and_free_their_workers(
    cluster, cache, tracking, tmp_path, capsys
):
    """Each trial a TorchTrainer of 2 workers (all the CPUs there are): a trial ASHA stops must hand its workers'
    placement group back before the next trial's trainer asks for the same CPUs, or that trial times out."""
    smoke = load_space("smoke")[0].base.overrides | {"stages.s1.iters": 4}  # its own prefixes: really trained
    path = tmp_path / "nested.yaml"
    path.write_text(NESTED.format(overrides=json.dumps(smoke)))
    out = tmp_path / "nested"
    started = time.monotonic()
    assert main(["search", str(path), "--set", f"run.out_dir={out}", "--set", f"run.cache_dir={cache}"]) == 0
    printed = capsys.readouterr().out
    trials = read_trials(out)
    assert len(trials) == 3 and not any(t["error"] for t in trials), printed
    assert all(t["metrics"]["world_size"] == 2 for t in trials)
    finished = [t for t in trials if t["final"]]
    stopped = [t for t in trials if not t["final"]]
    assert finished and stopped, printed  # ASHA stopped one, and the trial after it still got its workers
    assert all(t["metrics"]["stage"] == "s3" and t["metrics"]["trained_iters"] > 0 for t in finished)
    client = MlflowClient(tracking_uri=tracking)  # rank 0 of a finished trial logged its samples
    search = client.get_run(Store(tracking).find_parent(EXPERIMENT, ROLE, str(out / "tune")))
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{search.info.run_id}' and attributes.status = 'FINISHED'"
    [done] = client.search_runs([search.info.experiment_id], query)
    assert [a.path for a in client.list_artifacts(done.info.run_id, "plots")] == ["plots/samples.png"]
    deadline = time.monotonic() + 30
    while any(pg["state"] != "REMOVED" for pg in placement_group_table().values()) and time.monotonic() < deadline:
        time.sleep(1)
    assert all(pg["state"] == "REMOVED" for pg in placement_group_table().values())
    print(f"nested search: {time.monotonic() - started:.0f} s, {len(stopped)} of 3 stopped by ASHA")

"""`sdakd search NAME`: Ray Tune over a named space, Optuna's TPE (seeded, stored in sqlite) proposing trials, ASHA
stopping weak ones after each stage. What is not Ray (the trial itself, the prefix cache, the summary) lives in
`sdakd.search`; what is MLflow in `sdakd.tracking.search`.

Layout of a search folder (`run.out_dir` of the base config, default runs/search-<name>, config/origin.py):
  tune/        the Tune experiment (trial folders, per-stage checkpoints); `--resume` restores it. With a
               storage root (run.storage_path or env SDAKD_STORAGE_PATH, e.g. a cluster's bucket) it lives
               there instead, as <storage>/<this folder's name>
  base.yaml    the base config of every trial (absolute paths)
  optuna.db    the Optuna study (`optuna.load_study(study_name=<name>, storage="sqlite:///.../optuna.db")`)
  best.yaml    the best trial's full config, or pareto/<rank>.yaml for a multi-objective space:
               `sdakd train --config best.yaml` trains it as is
  trials.json  every trial: its parameters, the last report, and whether it trained all its stages

Resources. A 1-worker trial runs the engine inside the Tune trial (no extra actors, torch threads = its CPUs).
When ASHA stops it, its thread ends at the report it is blocked in, so its CPUs are free for the next trial at
once. A multi-worker trial runs a Ray Train TorchTrainer (`trial.tune_trial`) whose controller is an actor
owned by the trial's actor, holding the workers' placement group. A stopped trial's actor is therefore never
reused and is force-killed after a few seconds if its graceful stop hangs (TUNE_FORCE_TRIAL_CLEANUP_S): the
controller dies with it and Ray Train's placement-group cleaner frees the bundles before the next trial starts
its workers, instead of Tune's default ten minutes during which that trial would time out waiting for them.
Such a trial's function reserves nothing itself; `concurrency` bounds how many trainers want workers at once.

MLflow: a parent run per search in the experiment "sdakd-searches" and a child run per trial (tracking/search.py).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
from fnmatch import fnmatch
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import optuna
import pyarrow.fs
import torch
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from sdakd.config.load import absolute_paths, dump_yaml, load_config, validate, with_overrides
from sdakd.config.schema import ExperimentConfig
from sdakd.engine.device import resolve_device
from sdakd.errors import SdakdError
from sdakd.ray_adapter.cluster import check_fits, connect, raised, storage_root
from sdakd.ray_adapter.optuna_search import ResumableOptunaSearch
from sdakd.ray_adapter.retries import Retries
from sdakd.ray_adapter.search_callbacks import Progress, TrialRunsCallback
from sdakd.ray_adapter.trial import one_worker_placement, tune_trial
from sdakd.search.space import Space, Suggest
from sdakd.search.summary import Summary, TrialRow, fail_orphans, load_named_space, search_folder, summarize
from sdakd.search.trial import run_trial
from sdakd.teacher.cache import prepare_inputs
from sdakd.tracking.failures import failure, record_failure
from sdakd.tracking.search import EXPERIMENT, ROLE, SearchRun, TrialRuns, log_results, log_samples
from sdakd.tracking.store import Store, git_tags, resolve_uri

STATE_FILE = "engine.pt"
BASE_FILE = "base.yaml"  # the base config every trial starts from; --resume must give the same
# Seconds between snapshots of the experiment (trials + searcher): what a killed driver can lose on --resume.
SNAPSHOT_S = "2"
NESTED_CLEANUP_S = "5"
# A multi-worker trial's function only waits on its TorchTrainer, whose workers hold the CPUs and GPUs; Tune
# refuses a trial that asks for nothing, so it asks for a sliver.
NESTED_TRIAL_CPU = 0.01


def run_named(
    name: str,
    *,
    samples: int | None = None,
    resume: bool = False,
    overrides: Sequence[str] = (),
    tracking_uri: str | None = None,
) -> Summary:
    if samples is not None and samples < 1:
        raise SdakdError(f"--samples {samples}: a search needs at least 1 trial (--samples >= 1)")
    space, base = load_named_space(name, overrides)
    if samples is not None:
        if resume:
            raise SdakdError("--samples cannot change on --resume: the restored search keeps its trial count")
        space = space.model_copy(update={"samples": samples})
    return search(space, base, resume=resume, tracking_uri=tracking_uri)


def search(
    space: Space, base: ExperimentConfig, *, resume: bool | None = False, tracking_uri: str | None = None
) -> Summary:
    """Run (or resume) the search; everything that can be wrong with the input fails before Ray starts.
    `resume=None`: resume when there is a search to resume, else start (a grid's tuning studies)."""
    folder = search_folder(space, base)
    # Tune's experiment (trial folders, checkpoints, what --resume restores): in the configured storage (a
    # cluster's bucket), named after the search folder, else in the search folder itself.
    storage = storage_root(base)
    tune_storage, tune_name = (storage.rstrip("/"), folder.name) if storage else (str(folder), "tune")
    experiment = f"{tune_storage}/{tune_name}"
    trials = snapshot_trials(experiment)
    if resume is None:
        resume = bool(trials)
    if resume and not trials:
        raise SdakdError(f"nothing to resume: {experiment} holds no trial of a search (run it without --resume)")
    if not resume and trials:
        raise SdakdError(f"{experiment} already holds a search: add --resume, or set run.out_dir to a new folder")
    if not resume and trials == 0:  # a start that stopped before its first trial: nothing there to keep
        print(f"clearing {experiment} and its study: an earlier start stopped before its first trial", flush=True)
        fs, path = pyarrow.fs.FileSystem.from_uri(experiment)
        fs.delete_dir(path)
        (folder / "optuna.db").unlink(missing_ok=True)
    nested = space.resources.workers > 1
    # Trials run in their own folders and processes: every path they read must be absolute.
    base = with_overrides(absolute_paths(base), {"run.out_dir": None})
    saved = folder / BASE_FILE
    if resume and load_config(path=saved) != base:
        raise SdakdError(f"--resume needs the --set values the search started with (its base config: {saved})")
    store = Store(resolve_uri(tracking_uri, base.run.tracking_uri))  # an unreachable server fails here
    # Build the dataset and pretrain the teacher once, here, so concurrent trials never race on those caches.
    prepare_inputs(base, resolve_device(base.run.device))

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_S)
    if nested:
        os.environ.setdefault("TUNE_FORCE_TRIAL_CLEANUP_S", NESTED_CLEANUP_S)
    r, local = space.resources, connect(dashboard=nested)  # a trial's workers (1: the trial itself) must fit
    check_fits(r.workers, r.cpu, r.gpu, local, "lower resources.workers, .cpu or .gpu in the search space")
    experiment_id = store.experiment(EXPERIMENT)
    parent = store.parent(experiment_id, ROLE, experiment, reuse=resume)
    search_run = SearchRun(store.uri, experiment_id, parent)
    runs = TrialRuns(search_run, space, base, git_tags() | {"sdakd.search": space.name})
    trial = partial(
        _trial,
        base=base.to_dict(),
        prefix_cache=space.prefix_cache,
        resources=space.resources.model_dump(),
        search_run=search_run,
    )
    trainable = tune.with_resources(
        trial,
        {"cpu": NESTED_TRIAL_CPU} if nested else {"cpu": space.resources.cpu, "gpu": space.resources.gpu},
    )
    storage_db = f"sqlite:///{folder / 'optuna.db'}"
    retries = Retries(store.uri, experiment_id, parent, base.run.max_failures, "trial")
    ok = False
    try:
        if resume:
            tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, restart_errored=True)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            saved.write_text(dump_yaml(base))
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=_searcher(space, storage_db),
                    scheduler=_scheduler(space, base),
                    num_samples=space.samples,
                    max_concurrent_trials=space.concurrency,
                    reuse_actors=not nested,  # a reused actor would keep a stopped trial's Train controller alive
                ),
                run_config=tune.RunConfig(
                    name=tune_name,
                    storage_path=tune_storage,
                    verbose=0,
                    callbacks=[Progress(space), TrialRunsWithReasons(runs), retries],
                    # a trial whose process or node dies runs again from its last stage checkpoint
                    failure_config=tune.FailureConfig(max_failures=base.run.max_failures),
                ),
            )
        summary = summarize(space, base, folder, [_row(result) for result in tuner.fit()])
        fail_orphans(storage_db, space.name, {t["config"].get(Suggest.TRIAL_KEY) for t in summary.trials})
        log_results(store, parent, summary, storage_db)
        ok = not any(t["error"] for t in summary.trials)
    finally:
        store.close(parent, ok)
        if local:
            ray.shutdown()  # as ablate does: the workers' log lines end here, not in whatever the process does next
    print(store.ui_hint(experiment_id, parent))
    return summary


def snapshot_trials(experiment: str) -> int | None:
    """How many trials the latest snapshot of a Tune experiment lists; None when there is no experiment. A start
    that stopped before its first trial leaves one with none (or no snapshot), which Tune cannot resume."""
    if not tune.Tuner.can_restore(experiment):
        return None
    fs, path = pyarrow.fs.FileSystem.from_uri(experiment)
    files = fs.get_file_info(pyarrow.fs.FileSelector(path))
    snapshots = sorted(f.path for f in files if fnmatch(f.base_name, "experiment_state-*.json"))  # named by time
    if not snapshots:
        return 0
    with fs.open_input_stream(snapshots[-1]) as stream:
        return len(json.loads(stream.read())["trial_data"])


class TrialRunsWithReasons(TrialRunsCallback):
    """Trial events to MLflow, and an errored trial's reason on its run (tag, failed.json) as a cell's has it."""

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.pickled_error_file:  # Tune's local copy of what the trial raised (storage gets it later)
            with open(trial.pickled_error_file, "rb") as file:
                tracker = self.runs.run(trial)
                record_failure(tracker.client, tracker.run_id, raised(pickle.load(file)))
        super().on_trial_error(iteration, trials, trial, **info)  # then the run ends, FAILED


def _searcher(space: Space, storage: str) -> OptunaSearch:
    objectives = space.objectives
    multi = len(objectives) > 1
    return ResumableOptunaSearch(
        space=Suggest(space.parameters),
        metric=[o.metric for o in objectives] if multi else objectives[0].metric,
        mode=[o.mode for o in objectives] if multi else objectives[0].mode,
        seed=space.sampler.seed,  # OptunaSearch builds a TPESampler with it (multi-objective included)
        storage=optuna.storages.RDBStorage(storage),
        study_name=space.name,
        constraints=space.constraints,
    )


def _scheduler(space: Space, base: ExperimentConfig) -> ASHAScheduler | None:
    asha = space.scheduler
    if asha is None:
        return None  # FIFO: every trial trains all its stages
    return ASHAScheduler(
        time_attr="stage_number",  # one report per stage, cached or trained
        metric=space.metric,
        mode=space.mode,
        max_t=asha.max_t or len(type(base.stages).model_fields),
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )


# ---------------------------------------------------------------- inside a trial (a Ray actor)


def _trial(
    params: dict[str, Any],
    *,
    base: dict[str, Any],
    prefix_cache: bool,
    resources: dict[str, Any],
    search_run: SearchRun,
) -> None:
    trial_dir = Path(tune.get_context().get_trial_dir())
    trial_id = tune.get_context().get_trial_id()
    cfg = with_overrides(validate(base), Suggest.overrides(params) | {"run.out_dir": str(trial_dir / "run")})
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per stage checkpoint
    samples = partial(log_samples, search_run, trial_id)  # a trial that trains all its stages shows its pictures
    if resources["workers"] > 1:
        tune_trial(
            cfg,
            name=f"trial-{trial_id}",
            workers=resources["workers"],
            cpus_per_worker=resources["cpu"],
            gpus_per_worker=resources["gpu"],
            prefix_cache=prefix_cache,
            default_storage=trial_dir / "train",
            on_final=samples,
        )
        return
    checkpoint = tune.get_checkpoint()
    resume = Path(checkpoint.to_directory()) / STATE_FILE if checkpoint else None
    torch.set_num_threads(max(1, int(resources["cpu"])))
    run_trial(cfg, _report, prefix_cache=prefix_cache, resume=resume, on_final=samples,
              command=f"sdakd search  # trial {trial_id}", placement=one_worker_placement())


def _report(metrics: dict[str, Any], state_file: Path | None) -> None:
    if state_file is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        shutil.copyfile(state_file, Path(folder) / STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


# ---------------------------------------------------------------- on the driver


def _row(result: tune.Result) -> TrialRow:
    metrics = result.metrics or {}
    error = failure(raised(result.error))[0] if result.error else None  # one line; Tune keeps the traceback
    return TrialRow(metrics.get("trial_id", Path(result.path).name), result.config, metrics, error)

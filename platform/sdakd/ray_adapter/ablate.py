"""`sdakd ablate NAME`: the grid's pending cells as Ray Tune trials, each an MLflow run under the grid's parent.

A cell whose config hash already has a FINISHED run under the parent is skipped, so rerunning a grid by name
resumes it; failed cells run again; `force` reruns everything. The driver locks each cell it trains
(tracking/cell_locks.py): a second driver waits for it, and a RUNNING run left by a dead driver is failed and rerun.
The dataset and the teachers are built here, once, before Ray starts: concurrent cells then only read the caches
instead of pretraining the same teacher twice.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import ray
import torch
from ray import tune

from sdakd.ablate.grid import EXPERIMENT, ROLE, Cell, load_grid
from sdakd.ablate.report import report
from sdakd.ablate.tune import apply_winners, studies
from sdakd.config.load import with_overrides
from sdakd.engine.checkpoint import LAST, linked_folder
from sdakd.engine.device import resolve_device
from sdakd.engine.loop import Diverged
from sdakd.evaluate.suites import check_suites
from sdakd.pipeline import train
from sdakd.ray_adapter.cluster import connect, raised, storage_root
from sdakd.ray_adapter.retries import Retries
from sdakd.ray_adapter.train import RayReport, report_file
from sdakd.ray_adapter.trainer import DIVERGED
from sdakd.ray_adapter.tune_cells import run_studies
from sdakd.teacher.cache import prepare_inputs
from sdakd.tracking.cell_locks import CellLocks, claim_cells, lock_folder
from sdakd.tracking.failures import failure
from sdakd.tracking.run import tracked_run
from sdakd.tracking.trials import TRIAL_ID
from sdakd.tracking.store import CELL_KEY, Store, check_reachable, git_tags, resolve_uri


def ablate(name: str, seeds: Sequence[int] | None = None, force: bool = False, uri: str | None = None) -> bool:
    """Run the grid (`name`: a grid name or file) and print the report; False when a cell failed (it reruns next
    time)."""
    grid, cells = load_grid(name, seeds)
    tracking_uri = resolve_uri(uri, cells[0].cfg.run.tracking_uri)
    check_reachable(tracking_uri)  # before the suites are read: reading them may build the bundled dataset
    check_suites(c.cfg for c in cells)
    if grid.tune:  # each cell's own study first (finished ones are read back), then its winner's seeds
        cells = apply_winners(cells, run_studies(studies(grid, cells), uri))
    store = Store(tracking_uri)
    experiment_id = store.experiment(EXPERIMENT)
    locks = CellLocks(lock_folder(store.uri))
    locks.take(f"grid-{grid.name}", block=True)  # two first runs of a grid make one parent, not two
    parent = store.parent(experiment_id, ROLE, grid.name)
    locks.release(f"grid-{grid.name}")
    failed: dict[str, BaseException] = {}
    ok = False
    try:
        pending = claim_cells(store, parent, {c.hash: c.run_name for c in cells}, locks, force)
        todo = [c for c in cells if c.hash in pending]
        source = "" if name == grid.name else f" ({name})"
        print(f"grid {grid.name}{source}: {len(cells)} runs, {len(cells) - len(todo)} already finished, "
              f"{len(todo)} to run")
        if todo:
            jobs = [placed(c, grid.name) for c in todo]
            device = resolve_device("auto")  # not the cells' device: a cell pinned to a missing GPU fails as a cell
            for job in jobs:
                prepare_inputs(job.cfg, device)
            failed = run_cells(jobs, store.uri, experiment_id, parent, grid.name, command=f"sdakd ablate {name}")
        ok = not failed
    finally:
        locks.release_all()
        store.close(parent, ok)
    report(name, store=store)  # `name` again: the report finds the same file, hence the same grid
    print(store.ui_hint(experiment_id, parent))
    for run_name, error in failed.items():
        if isinstance(error, Diverged):  # the same config and seed diverge again: a rerun would only repeat it
            print(f"failed: {run_name}: {error}; rerunning `sdakd ablate {name}` repeats this cell's config and "
                  "seed, so it will diverge again unless the grid changes its config")
        else:
            print(f"failed: {run_name}: {failure(error)[0]} (its run is marked FAILED; rerun `sdakd ablate {name}`)")
    return not failed


def placed(cell: Cell, grid: str) -> Cell:
    """The cell with absolute output and cache folders: Tune runs each trial in its own working directory."""
    out = Path("runs", "ablate", grid, f"{cell.run_name}-{cell.hash}").resolve()
    run = {"run.out_dir": str(out), "run.cache_dir": str(cell.cfg.run.cache_dir.resolve())}
    return Cell(cell.name, cell.kind, with_overrides(cell.cfg, run))


def run_cells(
    cells: Sequence[Cell], uri: str, experiment_id: str, parent: str, grid: str, command: str
) -> dict[str, BaseException]:
    """One Tune trial per cell, as many at once as the cluster has CPUs (one each); returns the failed runs'
    names and what each raised."""
    started = connect()  # a caller's Ray (a cluster, a test) is used and left running
    gpu = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    jobs = {f"{i:03d}-{c.run_name}": c for i, c in enumerate(cells)}
    context = {"uri": uri, "experiment_id": experiment_id, "parent": parent, "grid": grid, "command": command,
               "tags": git_tags()}
    retries = cells[0].cfg.run.max_failures  # run.* is outside the config hash: one value for the whole grid
    trainable = tune.with_resources(tune.with_parameters(run_cell, jobs=jobs, context=context), {"cpu": 1, "gpu": gpu})
    tuner = tune.Tuner(
        trainable,
        param_space={"cell": tune.grid_search(list(jobs))},
        tune_config=tune.TuneConfig(reuse_actors=True),  # a warm worker skips seconds of torch/mlflow imports
        run_config=tune.RunConfig(
            name=f"ablate-{grid}-{time.strftime('%Y%m%d-%H%M%S')}",
            # a cluster's bucket (run.storage_path / SDAKD_STORAGE_PATH) keeps each cell's final checkpoint
            storage_path=storage_root(cells[0].cfg) or str(Path("runs", "ablate", grid, "tune").resolve()),
            # a cell whose process or node dies runs again from its last checkpoint
            failure_config=tune.FailureConfig(max_failures=retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the latest is all a retry needs
            callbacks=[Retries(uri, experiment_id, parent, retries, "cell")],
            verbose=1,
        ),
    )
    try:
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()  # flushes the workers' log lines now, before the report is printed
    failed = {jobs[r.config["cell"]].run_name: raised(r.error) for r in results if r.error}
    for r in results:
        if r.metrics and DIVERGED in r.metrics:
            record, file = json.loads(r.metrics[DIVERGED])
            failed[jobs[r.config["cell"]].run_name] = Diverged(record, Path(file) if file else None)
    return failed


report_to_tune = partial(report_file, tune.report)


def run_cell(config: dict[str, Any], jobs: dict[str, Cell], context: dict[str, Any]) -> None:
    """The Tune trial: one cell, one thread, one MLflow child run. Each checkpoint (`run.checkpoint_every` steps,
    and each stage end) is reported to Tune, which keeps it in storage: a retry after a lost node or a crashed
    process resumes from the latest one, on any node, and logs on into the same run."""
    torch.set_num_threads(1)  # one CPU per cell: more threads only fight the other cells
    cell = jobs[config["cell"]]
    tags = context["tags"] | {
        "sdakd.cell": cell.name,
        CELL_KEY: cell.key,
        "sdakd.kind": cell.kind,
        "sdakd.grid": context["grid"],
        TRIAL_ID: tune.get_context().get_trial_id(),
    }
    run = (context["uri"], context["experiment_id"], context["parent"], cell.run_name, cell.cfg, tags)
    checkpoint = tune.get_checkpoint()
    try:
        with checkpoint.as_directory() if checkpoint else nullcontext() as folder, tracked_run(*run) as tracker:
            command = f"{context['command']}  # cell {cell.name}, seed {cell.cfg.seed}"
            resume = Path(folder) / LAST if folder else None
            exp = train(cell.cfg, resume=resume, callbacks=[tracker, RayReport(report_to_tune)], command=command)
            tracker.on_done(exp, exp.metrics)
    except Diverged as err:  # reported, not raised: Tune would retry it, and the same config and seed diverge again
        tune.report({DIVERGED: json.dumps([err.record, str(err.file) if err.file else None])})
        return
    # The node's run folder may not outlive it: Tune copies the final training state and the student to storage.
    out = cell.cfg.run.out_dir
    with linked_folder(out / "checkpoints" / LAST, out / "student.pt") as folder:
        tune.report({"psnr_y": exp.metrics["student"]["psnr_y"]}, checkpoint=tune.Checkpoint.from_directory(folder))

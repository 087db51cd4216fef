"""Ray Train adapter on CPU (gloo): DDP equivalence, recovery from a lost worker, `--workers 1` == the local path.

One local Ray instance and one pretrained teacher serve the whole module; each run is 7 steps (stages 2/3/2)
with a checkpoint and a report after every step.
"""

from __future__ import annotations

import pytest
import ray
import torch

from sdakd.cli import main
from sdakd.config.load import load_config
from sdakd.ray_adapter.train import train_distributed

STEPS = 7
SETS = [
    "stages.s1.iters=2",
    "stages.s2.iters=3",
    "stages.s3.iters=2",
    "data.gt_size=32",
    "data.val_max_side=64",
    "teacher.pretrain.iters=20",
    "teacher.pretrain.d_iters=5",
    "run.log_every=1",
    "run.checkpoint_every=1",
    "run.latency_repeats=1",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def one_thread():
    """Local runs on one thread, like a worker of one CPU: the same float order, and on a busy machine several
    threads per process are far slower (measured 15x on 2 loaded cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():  # another module's cluster: use it, leave it
        yield
        return
    ray.init(address="local", num_cpus=4, include_dashboard=False)  # 2 workers of 1 CPU + room for Ray's actors
    yield
    ray.shutdown()


def overrides(workdir, name, batch):
    where = [f"run.cache_dir={workdir / 'cache'}", f"run.out_dir={workdir / name}", f"run.storage_path={workdir}/ray"]
    return [*SETS, f"data.batch_size={batch}", *where]


def cli_train(workdir, name, batch, *flags):
    args = [f"--set={text}" for text in overrides(workdir, name, batch)]
    assert main(["train", "--preset", "tiny", *args, *flags]) == 0
    return workdir / name


def api_train(workdir, name, batch, workers):
    return train_distributed(load_config("tiny", overrides=overrides(workdir, name, batch)), workers=workers)


def trained(run_dir):
    """Every net of the final checkpoint (student G, its D, the FM adapters) and the shipped EMA student."""
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    nets = {f"{net}.{key}": value for net, params in state["nets"].items() for key, value in params.items()}
    return nets | {f"ema.{key}": value for key, value in state["ema"].items()}


@pytest.fixture(scope="module")
def two_workers(workdir, local_ray):
    """Two workers of batch 2, the last of which dies after global step 4 (in stage 2) once: Ray restarts the
    group from its latest checkpoint. One run serves two tests, since each Ray run costs a minute here."""
    marker = workdir / "failed-once"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SDAKD_FAIL_AT_STEP", "4")
        env.setenv("SDAKD_FAIL_MARKER", str(marker))
        result = api_train(workdir, "two", batch=2, workers=2)
    assert marker.exists()  # the worker did die
    return result


@pytest.fixture(scope="module")
def one_worker(workdir, local_ray, one_thread):
    return cli_train(workdir, "one", 4, "--workers", "1", "--cpus-per-worker", "1")  # a worker's CPUs: its threads


def test_two_workers_hold_one_model_equal_to_one_worker_with_twice_the_batch(workdir, two_workers, one_worker):
    assert two_workers.return_value["info"]["ranks_agree"]  # both ranks end with the same weights, bit for bit
    two, one = trained(workdir / "two"), trained(one_worker)
    assert two.keys() == one.keys()  # DDP-wrapped and bare runs write interchangeable checkpoints
    # The same samples in the same order by construction (resumed ones included: a batch from the wrong step would
    # move weights by ~lr = 5e-4); only the float order of the gradient sums differs.
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=0, atol=1e-5, msg=key)


def test_a_lost_worker_is_replaced_and_no_step_is_reported_twice(two_workers):
    assert two_workers.metrics_dataframe["global_step"].tolist() == list(range(1, STEPS + 1))
    assert list(two_workers.return_value["stages"]) == ["s1", "s2", "s3"]


def test_one_worker_equals_the_local_path(workdir, one_worker, one_thread):
    local = trained(cli_train(workdir, "local", 4))
    for key, value in trained(one_worker).items():
        assert torch.equal(value, local[key]), key

"""What would break or crawl on the first GPU run, pinned on CPU where it can be (issue 18's "GPU readiness").

The tests marked `cuda` check on a GPU what a CPU cannot show; they skip without one, and benchmarks/gpu_check.sh
runs them. Ray and MLflow are imported only inside the tests that use them: the GPU machines have neither, and
the cuda tests must be collectable there.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from conftest import synthetic_batches
from sdakd.config.load import load_config
from sdakd.engine import Callbacks, Engine
from sdakd.engine.loop import Diverged
from sdakd.errors import SdakdError
from sdakd.experiment import Placement, build_experiment, compile_nets
from sdakd.methods import METHODS
from sdakd.models import DISCRIMINATORS, GENERATORS, build_discriminator, build_generator
from sdakd.models.memory_format import to_channels_last

# The smallest build of every registered network and an input it takes; a network registered without an entry
# here fails `test_every_network_is_covered`.
NETWORKS = {
    "rrdbnet": (dict(num_feat=8, num_block=1, num_grow_ch=4), (2, 3, 8, 8), ()),
    "srvgg_compact": (dict(num_feat=8, num_conv=2), (2, 3, 8, 8), ()),
    "gcfsr": (dict(out_size=64, narrow=0.05), (2, 3, 64, 64), (torch.tensor([4.0, 8.0]),)),
    "unet_sn": (dict(num_feat=8), (2, 3, 32, 32), ()),
    "stylegan2": (dict(out_size=64, narrow=0.05), (2, 3, 64, 64), ()),
}


def test_every_network_is_covered():
    assert set(NETWORKS) == set(GENERATORS.names()) | set(DISCRIMINATORS.names())


@pytest.mark.parametrize("arch", sorted(NETWORKS))
def test_every_network_converts_to_channels_last_and_computes_the_same(arch):
    params, shape, extra = NETWORKS[arch]
    torch.manual_seed(0)
    build = build_generator if arch in GENERATORS else build_discriminator
    net = build(arch, **params).eval()  # eval: spectral norm's vectors and GCFSR's noise stay fixed between calls
    if arch == "gcfsr":  # the crash the conversion avoids: its modulated weights are 5-D
        with pytest.raises(RuntimeError, match="required rank 4 tensor"):
            build(arch, **params).to(memory_format=torch.channels_last)
    x = torch.rand(shape)
    reference = net(x, *extra)
    reference.square().mean().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    to_channels_last(net)
    four_d = [p for p in net.parameters() if p.dim() == 4]
    assert four_d and all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    out = net(x.contiguous(memory_format=torch.channels_last), *extra)
    out.square().mean().backward()
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    for grad, param in zip(grads, net.parameters()):
        torch.testing.assert_close(param.grad, grad, rtol=1e-3, atol=1e-5)


def make_engine(cfg, teacher, **options):
    torch.manual_seed(cfg.seed)
    o = cfg.optim
    options = {"ema_decay": o.ema, "log_every": 1} | options
    return Engine(METHODS.get(cfg.method)(cfg, teacher), options.pop("batches", synthetic_batches()),
                  device=torch.device("cpu"), lr_g=o.lr_g, lr_d=o.lr_d, betas=o.betas, **options)


def test_the_ema_copy_does_not_write_the_students_taps(small_cfg, small_teacher):
    engine = make_engine(small_cfg(), small_teacher)
    engine.train_step(engine.stages[1], synthetic_batches()(0))
    taps = engine.method.student_taps
    live = dict(taps.features)
    assert live  # SDAKD taps the student
    ema = engine.ema.module
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in ema.modules())
    ema(synthetic_batches()(1)["lr"])
    assert taps.features.keys() == live.keys() and all(taps.features[k] is v for k, v in live.items())


class Syncs:
    """Counts the host reads of tensor values that sdakd's own code makes (torch's internals are not counted: on
    a CPU run Adam reads its CPU `step` counters, which costs no GPU sync)."""

    READS = ("item", "tolist", "__float__", "__bool__", "__int__")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, original):
        def read(tensor, *args):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("sdakd"):
                self.count += 1
            return original(tensor, *args)

        return read


class Logged(Callbacks):
    def __init__(self):
        self.metrics = []

    def on_log(self, stage, global_step, metrics):
        self.metrics.append(dict(metrics))


@pytest.mark.parametrize("log_every", [2, 4])
def test_losses_are_read_once_per_log_step_not_per_term_per_step(small_cfg, small_teacher, monkeypatch, log_every):
    cfg = small_cfg("stages.s1.iters=4", "stages.s2.iters=4", "stages.s3.iters=4")
    logged = Logged()
    engine = make_engine(cfg, small_teacher, log_every=log_every, callbacks=[logged])
    syncs = Syncs(monkeypatch)
    engine.run()
    # one read per log step, where each step read each of its 4 to 7 terms, and a finiteness flag, before
    assert syncs.count == 12 // log_every
    assert len(logged.metrics) == 12 // log_every and all(len(m) >= 4 for m in logged.metrics)


def test_logged_losses_are_the_per_step_means(small_cfg, small_teacher):
    """The averages a log step reports are those of the terms of each step, as reading every step would give."""
    cfg = small_cfg("stages.s1.iters=4", "stages.s2.iters=0", "stages.s3.iters=0", "optim.ema=0")
    engine = make_engine(cfg, small_teacher)
    per_step = [{k: float(v) for k, v in engine.train_step(engine.stages[0], synthetic_batches()(step)).items()}
                for step in range(4)]
    logged = Logged()
    make_engine(cfg, small_teacher, log_every=4, callbacks=[logged]).run()
    assert logged.metrics == [{k: sum(s[k] for s in per_step) / 4 for k in per_step[0]}]


def test_a_divergence_between_reads_names_its_step_and_stops_before_any_checkpoint(small_cfg, small_teacher, tmp_path):
    clean = synthetic_batches()

    def batches(step):  # a NaN pixel in step index 5: global step 6, counted from 1 as the logs count
        batch = clean(step)
        if step == 5:
            batch["hr"][0, 0, 0, 0] = float("nan")
        return batch

    cfg = small_cfg("stages.s1.iters=8", "stages.s2.iters=0", "stages.s3.iters=0", "method=vanilla")
    engine = make_engine(cfg, small_teacher, batches=batches, log_every=4, checkpoint_every=7,
                         checkpoint_dir=tmp_path / "checkpoints")
    with pytest.raises(Diverged) as diverged:
        engine.run()
    record = diverged.value.record
    # steps 5 and 6 came after the read at step 4; the checkpoint step 7 reads before it writes
    assert record["global_step"] == 6 and record["step_in_stage"] == 6 and record["stopped_at_step"] == 7
    assert record["terms"]["loss/pixel"] == "nan" and record["last_finite_step"] == 5
    assert str(diverged.value).startswith("stage s1 diverged at global step 6 (step 6 of 8): loss/pixel=nan")
    assert "the run stopped at global step 7" in str(diverged.value)
    assert not (tmp_path / "checkpoints").exists()


def test_resume_loads_to_the_cpu_and_leaves_adam_steps_there(small_cfg, small_teacher, tmp_path, monkeypatch):
    import sdakd.engine.loop as loop

    engine = make_engine(small_cfg(), small_teacher, checkpoint_dir=tmp_path)
    engine.run()
    seen = []
    real = loop.load_checkpoint
    monkeypatch.setattr(loop, "load_checkpoint", lambda path, **kw: seen.append(kw) or real(path, **kw))
    resumed = make_engine(small_cfg(), small_teacher)
    resumed.resume(tmp_path / "last.pt")
    assert seen == [{"map_location": "cpu"}]
    states = [s for opt in (resumed.opt_g, resumed.opt_d) for s in opt.state.values()]
    assert states and all(s["step"].device.type == "cpu" and s["step"].dim() == 0 for s in states)


def test_a_trial_without_gpus_trains_on_the_cpu(monkeypatch):
    import ray

    from sdakd.ray_adapter.trial import one_worker_placement

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # `run.device: auto` alone would pick the GPU
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    assert one_worker_placement().device == torch.device("cpu")
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    assert one_worker_placement().device is None  # Ray's GPU: the config's device (auto: the visible GPU)


def test_fractional_gpus_per_worker_are_refused_before_ray_starts(small_cfg):
    import ray

    from sdakd.ray_adapter.train import train_distributed
    from sdakd.ray_adapter.trial import tune_trial

    cfg = small_cfg()
    with pytest.raises(SdakdError, match=r"--gpus-per-worker=0.5 with 2 workers: each worker needs whole GPUs"):
        train_distributed(cfg, workers=2, gpus_per_worker=0.5)
    with pytest.raises(SdakdError, match=r"resources.gpu=1.5 with 3 workers"):
        tune_trial(cfg, name="t", workers=3, cpus_per_worker=1, gpus_per_worker=1.5, prefix_cache=False,
                   default_storage=cfg.run.cache_dir, on_final=print)
    assert not ray.is_initialized()


def test_teacher_pretraining_follows_optim_amp(small_cfg, monkeypatch, tmp_path):
    import sdakd.teacher.pretrain as pretrain
    from sdakd.data.dataset import ensure_dataset

    made = []

    class Recorded(Engine):
        def __init__(self, *args, **options):
            made.append(options)
            super().__init__(*args, **options)

    monkeypatch.setattr(pretrain, "Engine", Recorded)
    cfg = small_cfg("optim.amp=true", "teacher.pretrain.iters=1", "teacher.pretrain.d_iters=1")
    state = pretrain.pretrain_teacher(cfg, ensure_dataset(cfg), torch.device("cpu"), tmp_path / "t.pt")
    assert made[0]["amp"] is True
    assert all(v.device.type == "cpu" for net in state.values() for v in net.values())


def test_compile_keeps_an_r1_discriminator_eager(small_cfg, tmp_path):
    """aot_eager runs torch.compile's tracing and autograd on CPU, where R1's double backward fails as on a GPU."""
    torch.set_num_threads(1)
    cfg = small_cfg("loss.r1.weight=1", "teacher.pretrain.iters=2", "teacher.pretrain.d_iters=1",
                    "loss.perceptual.weight=0", f"run.out_dir={tmp_path / 'run'}")
    exp = build_experiment(cfg, Placement(device=torch.device("cpu"), writer=False))
    s3 = exp.engine.stages[2]
    batch = exp.engine.batches(0)
    compiled = compile_nets(exp, backend="aot_eager")
    assert "student_g" in compiled and "teacher.g" in compiled and "d" not in compiled
    losses = exp.engine.train_step(s3, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    exp.method.nets["d"].compile(backend="aot_eager")
    with pytest.raises(RuntimeError, match="double backward"):
        exp.engine.train_step(s3, batch)


# ---------------------------------------------------------------- N DDP workers train as one (DCD's BatchNorm too)

DDP_SETS = ["method=dcd", "stages.s1.iters=2", "stages.s2.iters=3", "stages.s3.iters=2", "data.gt_size=32",
            "data.val_max_side=64", "teacher.pretrain.iters=20", "teacher.pretrain.d_iters=5",
            "run.latency_repeats=1", "run.eval_max_images=1"]


def trained_nets(exp) -> dict[str, torch.Tensor]:
    from sdakd.engine import unwrap

    nets = {f"{name}.{k}": v for name, net in exp.method.nets.items() for k, v in unwrap(net).state_dict().items()}
    ema = {f"ema.{k}": v for k, v in exp.engine.eval_generator().state_dict().items()}
    return {k: v.detach().cpu() for k, v in (nets | ema).items()}


def ddp_worker(rank, backend, device_type, overrides, rendezvous, out):
    """One of two DDP ranks, as Ray Train's workers run (`Worker.start`), without Ray."""
    import torch.distributed as dist
    from functools import partial

    from sdakd.engine.ddp import wrap_trainable
    from sdakd.pipeline import run

    torch.set_num_threads(1)
    torch.backends.cudnn.allow_tf32 = False  # fp32 convs on a GPU too: TF32 rounding would hide a wrong batch
    dist.init_process_group(backend, init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    device = torch.device("cuda", rank % torch.cuda.device_count()) if device_type == "cuda" else torch.device("cpu")
    try:
        placement = Placement(rank, 2, device, partial(wrap_trainable, device=device), writer=rank == 0)
        exp = run(load_config("tiny", overrides=overrides), placement=placement, save=False)
        if rank == 0:
            torch.save(trained_nets(exp), out)
    finally:
        dist.destroy_process_group()


def two_ranks_equal_one(tmp_path, backend, device_type, atol=1e-5):
    from sdakd.pipeline import run
    from sdakd.teacher.cache import prepare_inputs

    where = [f"run.cache_dir={tmp_path / 'cache'}", f"run.out_dir={tmp_path / 'two'}", "optim.amp=false"]
    two_cfg = [*DDP_SETS, *where, "data.batch_size=2"]
    threads, tf32 = torch.get_num_threads(), torch.backends.cudnn.allow_tf32
    torch.set_num_threads(1)  # as each rank: the same float order
    torch.backends.cudnn.allow_tf32 = False
    try:
        one_cfg = load_config("tiny", overrides=[*DDP_SETS, *where, "data.batch_size=4",
                                                 f"run.out_dir={tmp_path / 'one'}"])
        prepare_inputs(one_cfg, torch.device("cpu"))  # the teacher cache, before two ranks would race on it
        torch.multiprocessing.spawn(ddp_worker, args=(backend, device_type, two_cfg, tmp_path / "rendezvous",
                                                      tmp_path / "two.pt"), nprocs=2)
        one = trained_nets(run(one_cfg, placement=Placement(device=torch.device(device_type)), save=False))
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.allow_tf32 = tf32
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert two.keys() == one.keys() and any("running_var" in k for k in one)  # DCD's connector BatchNorms
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=0, atol=atol, msg=key)


def test_two_cpu_ranks_of_dcd_train_as_one_rank_with_twice_the_batch(tmp_path):
    two_ranks_equal_one(tmp_path, "gloo", "cpu")


def test_a_tracked_run_logs_system_metrics(small_cfg, tmp_path):
    from mlflow.tracking import MlflowClient

    from sdakd.tracking.run import tracked_run
    from sdakd.tracking.store import Store

    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = store.experiment("system")
    parent = store.parent(experiment, "grid", "system")
    with tracked_run(store.uri, experiment, parent, "cell", small_cfg(), {}) as tracker:
        assert tracker.system is not None
        sum(i * i for i in range(10**6))  # some CPU work, well under the 10 s sampling interval
    metrics = MlflowClient(store.uri).get_run(tracker.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= metrics.keys(), metrics
    assert 0 < metrics["system/system_memory_usage_megabytes"]


# ---------------------------------------------------------------- on a GPU (benchmarks/gpu_check.sh)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def gpu_experiment(tmp_path, preset, *overrides, writer=False):
    """`preset` on the GPU as `run.device: auto` names it (`cuda`, no index), a short teacher pretraining."""
    cfg = load_config(preset, overrides=[f"run.cache_dir={tmp_path / 'cache'}", f"run.out_dir={tmp_path / 'run'}",
                                         "teacher.pretrain.iters=50", "teacher.pretrain.d_iters=5",
                                         "run.eval_max_images=1", "run.latency_repeats=2", *overrides])
    return build_experiment(cfg, Placement(device=torch.device("cuda"), writer=writer))


def train_losses(exp, stage_index, steps):
    """`steps` steps of one stage on the first batch, kept on the GPU: each step's loss terms, read at the end."""
    stage = exp.engine.stages[stage_index]
    batch = {k: v.cuda() for k, v in exp.engine.batches(0).items()}
    steps = [exp.engine.train_step(stage, batch) for _ in range(steps)]
    return {key: torch.stack([s[key] for s in steps]).tolist() for key in steps[0]}


def finite_and_decreasing(values):
    return all(map(math.isfinite, values)) and sum(values[-5:]) < sum(values[:5])


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("preset", ["tiny", "gcfsr-tiny"])
def test_bf16_channels_last_steps_learn(tmp_path, preset):
    exp = gpu_experiment(tmp_path, preset, "optim.amp=true", "optim.channels_last=true")
    assert torch.backends.cudnn.benchmark
    for net in (exp.method.nets["student_g"], exp.method.nets["d"], exp.teacher.g, exp.teacher.d):
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters() if p.dim() == 4)
    assert finite_and_decreasing(train_losses(exp, 0, 30)["loss/g_total"])
    s3 = train_losses(exp, 2, 10)
    assert all(math.isfinite(v) for values in s3.values() for v in values), s3


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("preset", ["tiny", "gcfsr-tiny"])  # gcfsr-tiny: R1 on, its D stays eager
def test_the_compiled_student_step_learns(tmp_path, preset):
    exp = gpu_experiment(tmp_path, preset, "optim.amp=true", "optim.channels_last=true")
    compiled = compile_nets(exp)
    assert "student_g" in compiled and ("d" in compiled) == (exp.cfg.loss.r1.weight == 0)
    assert finite_and_decreasing(train_losses(exp, 0, 30)["loss/g_total"])
    s3 = train_losses(exp, 2, 10)
    assert all(math.isfinite(v) for values in s3.values() for v in values), s3


@cuda
@pytest.mark.cuda
def test_a_resumed_run_steps_without_host_syncs(tmp_path):
    """Adam's `step` counters stay on the CPU after a resume; a step between log steps never waits on the GPU."""
    sets = ("stages.s1.iters=2", "stages.s2.iters=2", "stages.s3.iters=2", "run.log_every=100")
    gpu_experiment(tmp_path, "tiny", *sets, writer=True).engine.run()
    exp = gpu_experiment(tmp_path, "tiny", *sets)
    exp.engine.resume(tmp_path / "run" / "checkpoints" / "s2.pt")
    for opt in (exp.engine.opt_g, exp.engine.opt_d):
        for state in opt.state.values():
            assert state["step"].device.type == "cpu" and state["exp_avg"].device.type == "cuda"
    train_losses(exp, 2, 1)  # warm-up: cudnn picks its algorithms
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stage, batch = exp.engine.stages[2], {k: v.cuda() for k, v in exp.engine.batches(1).items()}
        for step in range(3):
            exp.engine.losses.add(step, exp.engine.train_step(stage, batch), stage)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(v.is_cuda for *_, v in exp.engine.losses.pending)


@cuda
@pytest.mark.cuda
def test_cost_times_nets_in_place_and_pretraining_frees_the_gpu(tmp_path, monkeypatch):
    import copy

    from sdakd.data.dataset import ensure_dataset
    from sdakd.evaluate.validator import cost
    from sdakd.teacher.pretrain import pretrain_teacher

    exp = gpu_experiment(tmp_path, "tiny")
    monkeypatch.setattr(copy, "deepcopy", lambda *a: pytest.fail("cost() copied a net already on the GPU"))
    assert cost(exp.teacher.g, exp.device, 2)["latency_ms"] > 0 and exp.device == torch.device("cuda")
    monkeypatch.undo()
    data = ensure_dataset(exp.cfg)
    pretrain_teacher(exp.cfg, data, torch.device("cuda"), tmp_path / "warm-up.pt")  # cuBLAS/cuDNN workspaces stay
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    state = pretrain_teacher(exp.cfg, data, torch.device("cuda"), tmp_path / "teacher.pt")
    assert all(v.device.type == "cpu" for net in state.values() for v in net.values())
    assert torch.cuda.memory_allocated() == allocated and torch.cuda.memory_reserved() <= reserved


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["nccl", "gloo"])  # gloo: both ranks on one GPU, where NCCL refuses two
def test_two_gpu_ranks_of_dcd_train_as_one_rank_with_twice_the_batch(tmp_path, backend):
    if backend == "nccl" and torch.cuda.device_count() < 2:
        pytest.skip("NCCL needs one GPU per rank: 2 GPUs")
    two_ranks_equal_one(tmp_path, backend, "cuda", atol=1e-4)

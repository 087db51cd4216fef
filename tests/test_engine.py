"""Stage semantics and exact resume, on CPU with a tiny teacher and a step-indexed synthetic loader."""

import shutil

import torch

from conftest import synthetic_batches
from sdakd.engine import Callbacks, Engine, Position
from sdakd.methods import METHODS


def make_engine(cfg, teacher, checkpoint_dir=None, callbacks=(), every=1000):
    torch.manual_seed(cfg.seed)
    method = METHODS.get(cfg.method)(cfg, teacher)
    o = cfg.optim
    return Engine(
        method, synthetic_batches(), device=torch.device("cpu"), lr_g=o.lr_g, lr_d=o.lr_d, betas=o.betas,
        ema_decay=o.ema, checkpoint_dir=checkpoint_dir, checkpoint_every=every, log_every=1, callbacks=callbacks,
    )


class Snapshots(Callbacks):
    """Student-D weights at every stage end."""

    def __init__(self, engine_ref):
        self.engine_ref = engine_ref
        self.d_at_end = {}

    def on_stage_end(self, stage, global_step, metrics):
        d = self.engine_ref[0].method.nets["d"]
        self.d_at_end[stage.name] = [p.detach().clone() for p in d.parameters()]


def run_with_snapshots(cfg, teacher):
    ref = []
    snaps = Snapshots(ref)
    engine = make_engine(cfg, teacher, callbacks=[snaps])
    ref.append(engine)
    d0 = [p.detach().clone() for p in engine.method.nets["d"].parameters()]
    engine.run()
    return engine, d0, snaps.d_at_end


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_sdakd_stage_semantics(small_cfg, small_teacher):
    engine, d0, d_end = run_with_snapshots(small_cfg(), small_teacher)
    s = engine.stats
    # stage 1: supervised only; no GAN term, no FM, the student D never steps
    assert s["s1"]["g_terms"] == {"pixel", "perceptual", "teacher_output"}
    assert s["s1"]["d_steps"] == 0 and same(d0, d_end["s1"])
    # stage 2: FM present, no GAN term for G, student D warms up (it steps)
    assert "fm" in s["s2"]["g_terms"] and "gan" not in s["s2"]["g_terms"]
    assert s["s2"]["d_steps"] == 2 and not same(d_end["s1"], d_end["s2"])
    # stage 3: the student D's GAN term drives G
    assert {"fm", "gan"} <= s["s3"]["g_terms"] and s["s3"]["d_steps"] == 2
    assert engine.method.adversary() is engine.method.nets["d"]
    student_d_params = sum(p.numel() for p in engine.method.nets["d"].parameters())
    assert student_d_params < sum(p.numel() for p in small_teacher.d.parameters())


def test_warm_up_off_keeps_the_student_d_still_in_stage_2(small_cfg, small_teacher):
    engine, d0, d_end = run_with_snapshots(small_cfg("methods.sdakd.warm_d=false"), small_teacher)
    assert engine.stats["s2"]["d_steps"] == 0 and same(d0, d_end["s2"])
    assert engine.stats["s3"]["d_steps"] == 2


def test_teacher_adversary_uses_the_teacher_d(small_cfg, small_teacher):
    frozen = make_engine(small_cfg("methods.sdakd.adversary=teacher", "methods.sdakd.teacher_d=frozen"), small_teacher)
    assert frozen.method.adversary() is small_teacher.d and "d" not in frozen.method.nets
    frozen.run()
    assert frozen.stats["s3"]["d_steps"] == 0 and "gan" in frozen.stats["s3"]["g_terms"]

    tuned = make_engine(small_cfg("methods.sdakd.adversary=teacher"), small_teacher)
    copy = tuned.method.adversary()
    assert copy is not small_teacher.d
    assert same(copy.state_dict().values(), small_teacher.d.state_dict().values())  # starts as the teacher D


def test_zero_weights_and_skipped_stages_are_ablations(small_cfg, small_teacher):
    engine = make_engine(small_cfg("loss.fm.weight=0", "stages.s1.iters=0"), small_teacher)
    engine.run()
    assert engine.stats["s1"]["g_steps"] == 0
    assert "fm" not in engine.stats["s2"]["g_terms"] | engine.stats["s3"]["g_terms"]
    assert "s1" not in engine.history


class KeepCheckpointAt(Callbacks):
    def __init__(self, position, keep_as):
        self.position, self.keep_as = position, keep_as

    def on_checkpoint(self, path, position, global_step):
        if position == self.position:
            shutil.copyfile(path, self.keep_as)


def test_resume_mid_stage_reproduces_the_uninterrupted_run(small_cfg, small_teacher, tmp_path):
    cfg = small_cfg("stages.s1.iters=3", "stages.s2.iters=4", "stages.s3.iters=3")
    mid = tmp_path / "mid.pt"
    full = make_engine(cfg, small_teacher, tmp_path / "a", [KeepCheckpointAt(Position(1, 2), mid)], every=2)
    full.run()
    assert mid.exists()

    resumed = make_engine(cfg, small_teacher, tmp_path / "b", every=2)
    resumed.resume(mid)
    assert resumed.position == Position(1, 2) and resumed.global_step() == 5
    resumed.run()
    assert resumed.stats["s1"]["g_steps"] == 0 and resumed.stats["s2"]["g_steps"] == 2  # no step done twice
    a, b = full.state_dict(), resumed.state_dict()
    for name in a["nets"]:
        for key, value in a["nets"][name].items():
            assert torch.equal(value, b["nets"][name][key]), f"{name}.{key} differs after resume"
    for key, value in a["ema"].items():
        assert torch.equal(value, b["ema"][key])

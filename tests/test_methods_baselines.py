"""Baselines (DCD, CRD, AKDG, vanilla, output-KD): hand-computed losses, who sees what, and one step per stage."""

from __future__ import annotations

import ast
import copy
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import synthetic_batches
from sdakd.engine import Engine
from sdakd.losses import relational_kd
from sdakd.losses.relational import angle_potential, content_items, distance_potential
from sdakd.methods import METHODS
from sdakd.methods.dcd import fitting_factor
from sdakd.models import DISCRIMINATORS
from sdakd.teacher.frozen import Teacher

ENGINE_DIR = Path(__file__).resolve().parents[1] / "platform" / "sdakd" / "engine"
ONE_STEP_EACH = ("stages.s1.iters=1", "stages.s2.iters=1", "stages.s3.iters=1")


def build(cfg, teacher):
    torch.manual_seed(cfg.seed)
    return METHODS.get(cfg.method)(cfg, teacher)


def engine_for(method):
    o = method.cfg.optim
    batches = synthetic_batches(method.cfg.data.batch_size, method.cfg.data.gt_size)
    return Engine(method, batches, device=torch.device("cpu"), lr_g=o.lr_g, lr_d=o.lr_d, betas=o.betas, log_every=1)


def first_step(method):
    return method.step(synthetic_batches(method.cfg.data.batch_size, method.cfg.data.gt_size)(0))


# ---------------------------------------------------------------- relational KD


def test_relational_kd_by_hand() -> None:
    # Student: equilateral triangle of side 2. Teacher: the 3-4-5 right triangle.
    s = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, math.sqrt(3.0)]], dtype=torch.float64)
    t = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    # Distances / mean non-zero distance: student 2/2 = 1 for each pair; teacher mean (3+4+5)/3 = 4, so
    # d01 = 0.75, d02 = 1, d12 = 1.25. Differences 0.25, 0, 0.25; smooth-L1 (beta 1) = 0.5 * 0.25^2 = 1/32 each,
    # and each pair appears twice in the 3x3 matrix (zero diagonal): distance = 4 * (1/32) / 9 = 1/72.
    # Angles [a, b, c] = cos at a between b and c: 0 if b or c is a; 1 if b == c != a (equal on both sides).
    # The other 6 entries: student cos 60 deg = 0.5 everywhere; teacher cos at T0 = 0 (right angle),
    # at T1 = <(-3,0), (-3,4)> / (3*5) = 0.6, at T2 = <(0,-4), (3,-4)> / (4*5) = 0.8. Differences 0.5, 0.1, 0.3,
    # each twice: smooth-L1 sum = 2 * 0.5 * (0.25 + 0.01 + 0.09) = 0.35 over 27 entries.
    expected = 1 / 72 + 2 * 0.35 / 27
    assert relational_kd(s, t).item() == pytest.approx(expected, abs=1e-12)
    assert distance_potential(t)[1, 2].item() == pytest.approx(1.25)
    assert angle_potential(t)[1, 0, 2].item() == pytest.approx(0.6)


def test_relational_kd_grads_only_the_student_and_survives_duplicates() -> None:
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [3.0, 1.0]], requires_grad=True)
    t = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0], [0.0, 0.0]], requires_grad=True)
    relational_kd(s, t).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_relational_kd_subsample_evenly_spaced_angle_items() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64)
    keep = [0, 2, 4]  # linspace(0, 4, 3)
    expected = F.smooth_l1_loss(distance_potential(s), distance_potential(t)) + 2 * F.smooth_l1_loss(
        angle_potential(s[keep]), angle_potential(t[keep])
    )
    assert relational_kd(s, t, subsample=3).item() == pytest.approx(expected.item(), abs=1e-12)
    assert relational_kd(s, t, subsample=5).item() == relational_kd(s, t).item()


def test_content_items_rows_columns_patches() -> None:
    x = torch.arange(2 * 3 * 64 * 32, dtype=torch.float32).reshape(2, 3, 64, 32)
    items = content_items(x, 32)
    assert items["rows"].shape == (2, 64, 3 * 32) and items["columns"].shape == (2, 32, 3 * 64)
    assert items["patches"].shape == (2, 2, 3 * 32 * 32)
    assert torch.equal(items["rows"][1, 5], x[1, :, 5, :].reshape(-1))
    assert torch.equal(items["columns"][0, 7], x[0, :, :, 7].reshape(-1))
    assert torch.equal(items["patches"][1, 1], x[1, :, 32:, :].reshape(-1))


# ---------------------------------------------------------------- DCD


def test_dcd_loss_is_zero_for_identical_taps_and_connectors(small_cfg, small_teacher) -> None:
    # a student with the teacher's exact architecture, weights and connectors
    depth = small_cfg().teacher.num_block
    cfg = small_cfg("method=dcd", "student.width=1.0", f"student.num_block={depth}")
    method = build(cfg, small_teacher)
    assert method.student_tap_names == method.teacher_tap_names
    method.nets["student_g"].load_state_dict(small_teacher.g.state_dict())
    method.nets["connectors"].load_state_dict(method.nets["teacher_connectors"].state_dict())
    assert method.g_dcd(first_step(method)).item() == pytest.approx(0.0, abs=1e-6)


def test_dcd_gradient_reaches_student_connectors_not_teacher(small_cfg, small_teacher) -> None:
    method = build(small_cfg("method=dcd"), small_teacher)
    step = first_step(method)
    loss = method.g_dcd(step)
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.nets["connectors"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.nets["student_g"].parameters())
    assert all(p.grad is None for p in small_teacher.g.parameters())
    assert all(p.grad is None for p in method.nets["teacher_connectors"].parameters())
    assert not any(f.requires_grad for f in step.teacher_features.values())


def test_dcd_teacher_connectors_are_fixed_and_seeded(small_cfg, small_teacher) -> None:
    cfg = small_cfg("method=dcd")
    a, b = build(cfg, small_teacher), build(cfg, small_teacher)
    for pa, pb in zip(a.nets["teacher_connectors"].parameters(), b.nets["teacher_connectors"].parameters()):
        assert torch.equal(pa, pb) and not pa.requires_grad
    engine = engine_for(a)
    trained = {id(p) for group in engine.opt_g.param_groups + engine.opt_d.param_groups for p in group["params"]}
    assert not trained & {id(p) for p in a.nets["teacher_connectors"].parameters()}
    assert "teacher_connectors" in engine.state_dict()["nets"]  # saved with every checkpoint
    assert a.adversary() is a.nets["d"]


def test_dcd_upsamples_connector_maps_to_fit_the_unet_d(small_cfg, small_teacher) -> None:
    assert [fitting_factor(12, 12), fitting_factor(16, 64), fitting_factor(12, 16), fitting_factor(13, 8)] == [2, 1, 2, 8]
    method = build(small_cfg("method=dcd"), small_teacher)
    assert method.phi(torch.rand(2, 3, 12, 12)).shape[-2:] == (24, 24)  # conv8 keeps the input size


def _hooked(net: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of module `name` of `net` on `x`, through a plain forward hook."""
    seen = []
    handle = dict(net.named_modules())[name].register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        net(x)
    handle.remove()
    return seen[0]


def _connector_by_hand(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """1x1 conv without bias, batch-norm with the batch's statistics (biased variance), affine, ReLU."""
    conv, bn = seq[0], seq[1]
    y = F.conv2d(x, conv.weight)
    mean, var = y.mean((0, 2, 3), keepdim=True), y.var((0, 2, 3), unbiased=False, keepdim=True)
    y = (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return y.clamp(min=0)


def test_dcd_loss_equals_a_hand_computation(small_cfg, small_teacher) -> None:
    """L_DCD = sum over taps of mean |phi_D(conn_S(F_S)) - phi_D(conn_T(F_T))|, recomputed outside the method:
    features by plain hooks, connectors by their formula, phi_D by a hook on conv8 of copies of the D taken before
    the method ran (its spectral norm advances one power iteration per D call: one per tap, on each side)."""
    method = build(small_cfg("method=dcd", "methods.dcd.tap_every=1"), small_teacher)
    step = first_step(method)
    before = copy.deepcopy(method.nets)
    teacher_d, student_d = copy.deepcopy(before["d"]), copy.deepcopy(before["d"])
    loss = method.g_dcd(step).item()

    phi_layer = method.options.phi_layer
    expected = 0.0
    for k, (t_name, s_name) in enumerate(zip(method.teacher_tap_names, method.student_tap_names)):
        t_map = _connector_by_hand(before["teacher_connectors"][k], _hooked(small_teacher.g, t_name, step.lr))
        s_map = _connector_by_hand(before["connectors"][k], _hooked(before["student_g"], s_name, step.lr))
        factor = fitting_factor(*t_map.shape[-2:])
        up = (lambda m: m.repeat_interleave(factor, 2).repeat_interleave(factor, 3))  # nearest, by hand
        phi_t = _hooked(teacher_d, phi_layer, up(t_map))
        phi_s = _hooked(student_d, phi_layer, up(s_map))
        expected += (phi_s - phi_t).abs().mean().item()
    assert len(method.teacher_tap_names) >= 2 and loss > 0
    assert loss == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- CRD


def test_crd_plays_against_the_frozen_teacher_d(small_cfg, small_teacher) -> None:
    method = build(small_cfg("method=crd"), small_teacher)
    assert method.adversary() is small_teacher.d and "d" not in method.nets
    assert engine_for(method).opt_d is None
    step = first_step(method)
    step.__dict__["sr"] = step.teacher_sr.clone()  # a student that imitates perfectly
    assert method.g_crd(step).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- AKDG


class ConstantG(nn.Module):
    """A generator whose output is `value` everywhere, at x4."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return torch.full((lr.shape[0], 3, lr.shape[2] * 4, lr.shape[3] * 4), self.value)


class MeanD(nn.Module):
    """A discriminator whose logit map is the channel mean: it reads an input of `v` as logit `v`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1, keepdim=True)


def test_akdg_distillation_d_sees_teacher_output_as_real(small_cfg, small_teacher) -> None:
    teacher = Teacher(ConstantG(5.0), small_teacher.d, identity="const", source="test")
    method = build(small_cfg("method=akdg"), teacher)
    method.nets["d_kd"] = MeanD()
    step = first_step(method)
    # BCE with target 1 on logit 5 is softplus(-5); with target 0 it would be softplus(5)
    assert method.d_kd_real(step).item() == pytest.approx(F.softplus(torch.tensor(-5.0)).item())
    student_logits = step.sr.detach().mean(1, keepdim=True)
    assert method.d_kd_fake(step).item() == pytest.approx(F.softplus(student_logits).mean().item(), rel=1e-5)
    assert method.g_gan_kd(step).item() == pytest.approx(F.softplus(-student_logits).mean().item(), rel=1e-5)
    s3 = method.stages()[2]
    assert s3.g_loss["gan_kd"] == pytest.approx(s3.g_loss["gan"] * method.options.lambda_kd)


# ---------------------------------------------------------------- vanilla, output-KD


class Untouchable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the teacher was called")


def test_vanilla_never_calls_the_teacher(small_cfg) -> None:
    teacher = Teacher(Untouchable(), Untouchable(), identity="untouchable", source="test")
    method = build(small_cfg("method=vanilla", *ONE_STEP_EACH), teacher)
    assert method.teacher is None
    engine = engine_for(method)
    engine.run()
    assert "teacher_output" not in engine.stats["s1"]["g_terms"] and "gan" in engine.stats["s3"]["g_terms"]


def test_output_kd_builds_no_discriminator(small_cfg, small_teacher, monkeypatch) -> None:
    def refuse(name: str):
        raise AssertionError(f"output_kd built a discriminator {name!r}")

    monkeypatch.setattr(DISCRIMINATORS, "get", refuse)
    method = build(small_cfg("method=output_kd", *ONE_STEP_EACH), small_teacher)
    engine = engine_for(method)
    assert engine.opt_d is None and set(method.nets) == {"student_g"}
    engine.run()
    supervised = {name for name, weight in method.supervised().items() if weight}
    assert "teacher_output" in supervised
    assert all(s["g_terms"] == supervised for s in engine.stats.values())


# ---------------------------------------------------------------- every method


def identifier(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, (ast.arg, ast.keyword)):
        return node.arg
    return None


def engine_code() -> tuple[set[str], set[str]]:
    """Lower-cased identifiers and the string constants of the engine's code. Import paths and prose are left
    out: the package shares its name with the `sdakd` method ("from sdakd.engine ...")."""
    names, strings = set(), set()
    for path in ENGINE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value.strip())
            elif identifier(node):
                names.add(identifier(node).lower())
    return names, strings


@pytest.mark.parametrize("name", METHODS.names())
def test_engine_never_names_a_method(name: str) -> None:
    names, strings = engine_code()
    assert name not in strings
    assert not [n for n in names if re.search(rf"(^|_){name}(_|$)", n)]


@pytest.mark.parametrize("name", METHODS.names())
def test_one_step_per_stage(name, small_cfg, small_teacher) -> None:
    cfg = small_cfg(f"method={name}", *ONE_STEP_EACH)
    method = build(cfg, small_teacher)
    engine = engine_for(method)
    engine.run()  # raises on a non-finite loss
    assert [s.name for s in engine.stages] == ["s1", "s2", "s3"]
    # same budget for every method: one G step in each configured stage
    assert [engine.stats[s]["g_steps"] for s in ("s1", "s2", "s3")] == [1, 1, 1]
    for stage in engine.stages:
        assert engine.stats[stage.name]["g_terms"] == set(stage.g_loss)
        assert engine.stats[stage.name]["d_terms"] == set(stage.d_loss)

"""Step overhead: the engine's SDAKD stage-3 step vs the same step written as plain PyTorch.

Both update their own copies of the same networks (same weights at the start) on the same batch; the rounds
interleave one engine step and one plain step. Target: median engine/plain <= 1.03.

    python -m benchmarks.step_overhead [--rounds N] [--device cuda]

Then the engine-only work (what the plain step does not do) is timed alone, at these sizes and at paper scale
(64/23/32 teacher, 1/4 student, taps every 4 blocks), where a fast GPU step would feel it most. With --device cuda
the paper-scale step itself is compared too. Both sides run fp32 without the perceptual term (the plain step has
neither autocast nor VGG).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn

if __package__ in (None, ""):  # run as `python benchmarks/step_overhead.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (
    PAPER_SCALE, best_of, command_line, experiment, interleaved, median_ci, ms, quiet_cpu, ratios,
)
from sdakd.models.from_config import discriminator, student_generator
from sdakd.models import FeatureTaps, build_generator, pair_taps
from sdakd.experiment import Experiment

TARGET = 1.03
SAME_WORK = ("loss.perceptual.weight=0", "optim.amp=false", "optim.channels_last=false")
CONFIGS = {  # name: (preset, overrides)
    "tiny (srvgg_compact 48/12 -> 24/6, D 8)": ("tiny", ()),
    "small RRDBNet (32/4/16 -> 16/4/8, D 16)": ("tiny", (
        "teacher.arch=rrdbnet", "teacher.num_feat=32", "teacher.num_block=4", "teacher.num_grow_ch=16",
        "teacher.d_num_feat=32", "student.num_block=null", "data.batch_size=4", "data.gt_size=48",
    )),
}  # fmt: skip
GPU_CONFIGS = {"paper scale (RRDBNet 64/23/32 -> 1/4, D 1/4; batch 12, GT 256)": ("realesrgan-x4", PAPER_SCALE)}


@torch.no_grad()
def lerp_ema(shadow: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    for e, p in zip(shadow, params):
        e.lerp_(p, 1 - decay)


class PlainStep:
    """SDAKD stage 3 by hand: student G + tapped teacher, FM adapters, L1s, GAN via the student D, Adam, EMA, D step."""

    def __init__(self, exp: Experiment) -> None:
        cfg, nets = exp.cfg, exp.method.nets
        self.student = student_generator(cfg).to(exp.device)
        self.student.load_state_dict(nets["student_g"].state_dict())
        self.ema = [p.detach().clone() for p in self.student.parameters()]
        self.adapters = copy.deepcopy(nets["adapters"])
        self.d = discriminator(cfg, cfg.student_d.width).to(exp.device)
        self.d.load_state_dict(nets["d"].state_dict())
        self.teacher = copy.deepcopy(exp.teacher.g)
        self.features: dict[str, torch.Tensor] = {}
        self._tap(self.student, exp.method.student_tap_names, "s")
        self._tap(self.teacher, exp.method.teacher_tap_names, "t")
        self.pairs = [(f"s{s}", f"t{t}") for s, t in zip(exp.method.student_tap_names, exp.method.teacher_tap_names)]
        o, loss = cfg.optim, cfg.loss
        g_params = [*self.student.parameters(), *self.adapters.parameters()]
        self.opt_g = torch.optim.Adam(g_params, lr=o.lr_g, betas=o.betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=o.lr_d, betas=o.betas)
        self.ema_decay = o.ema
        self.w_pix, self.w_out, self.w_fm, self.w_gan = (
            loss.pixel.weight, loss.teacher_output.weight, loss.fm.weight, loss.gan.weight
        )

    def _tap(self, net: torch.nn.Module, names: list[str], prefix: str) -> None:
        modules = dict(net.named_modules())
        for name in names:
            key = prefix + name
            modules[name].register_forward_hook(lambda m, i, out, key=key: self.features.__setitem__(key, out))

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        lr, hr = batch["lr"], batch["hr"]
        sr = self.student(lr)
        with torch.no_grad():
            teacher_sr = self.teacher(lr)
        fm = sum(
            torch.mean((adapter(self.features[s]) - self.features[t]) ** 2)
            for adapter, (s, t) in zip(self.adapters, self.pairs)
        )
        self.d.requires_grad_(False)
        fake_logits = self.d(sr)
        g_loss = (
            self.w_pix * F.l1_loss(sr, hr)
            + self.w_out * F.l1_loss(sr, teacher_sr)
            + self.w_fm * fm
            + self.w_gan * F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
        )
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.d.requires_grad_(True)
        lerp_ema(self.ema, list(self.student.parameters()), self.ema_decay)
        real, fake = self.d(hr), self.d(sr.detach())
        d_loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
            fake, torch.zeros_like(fake)
        )
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        return {"g_total": g_loss.item(), "d_total": d_loss.item()}


def measure(name: str, preset: str, overrides: tuple[str, ...], rounds: int, device: str) -> float:
    exp = experiment(preset, [*SAME_WORK, *overrides], device=device)
    engine, method = exp.engine, exp.method
    s3 = next(s for s in engine.stages if s.name == "s3")
    plain = PlainStep(exp)  # copies the weights before the engine moves them
    batch = {k: v.to(exp.device) for k, v in engine.batches(0).items()}
    first_engine, first_plain = engine.train_step(s3, batch), plain(batch)
    same = {k: abs(first_engine[f"loss/{k}"] - v) for k, v in first_plain.items()}
    times = interleaved({"engine": lambda: engine.train_step(s3, batch), "plain": lambda: plain(batch)}, rounds)
    print(f"\n{name}: batch {tuple(batch['lr'].shape)} LR -> {tuple(batch['hr'].shape)} HR")
    print("  first-step loss |engine - plain|: " + ", ".join(f"{k} {v:.1e}" for k, v in same.items()))
    worst = 0.0
    for clock, samples in (("wall", times.wall), ("cpu", times.cpu)):
        ratio, low, high = median_ci(ratios(samples, "engine", "plain"))
        worst = max(worst, ratio)
        print(f"  {clock:4s} engine {ms(samples['engine'])} | plain {ms(samples['plain'])}"
              f" | median engine/plain {ratio:.3f} (95% CI {low:.3f}-{high:.3f})")
    print(f"  target <= {TARGET}: {'met' if worst <= TARGET else 'NOT met'}")
    extras(method.nets["student_g"], engine.ema, exp.teacher.g, method.teacher_tap_names)
    return worst


def extras(student: nn.Module, ema: ModelEmaV3, teacher: nn.Module, tap_names: list[str]) -> None:
    """The engine's own per-step work beyond the plain step's: teacher hooks made per call, timm's EMA update."""

    def teacher_hooks() -> None:
        with FeatureTaps(teacher, tap_names):
            pass

    params = list(student.parameters())
    shadow = [p.detach().clone() for p in params]
    costs = {
        "teacher tap hooks set up + removed": best_of(teacher_hooks),
        "timm ModelEmaV3.update": best_of(lambda: ema.update(student, step=1000)),
        "plain lerp_ EMA": best_of(lambda: lerp_ema(shadow, params, 0.999)),
    }
    print("  engine-only pieces (best of 5): " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in costs.items()))


def paper_scale_extras() -> None:
    teacher, student = build_generator("rrdbnet"), build_generator("rrdbnet", width=0.25)
    taps = [t for t, _ in pair_taps(teacher, student, every=4)]
    print(f"\npaper scale (RRDBNet 64/23/32 teacher, 1/4 student, {len(taps)} taps), no step timed:")
    with torch.no_grad():
        extras(student, ModelEmaV3(student, decay=0.999, use_warmup=True), teacher, taps)


def main() -> None:
    parser = command_line(__doc__, rounds=40)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to add the paper-scale step")
    args = parser.parse_args()
    quiet_cpu()
    on_gpu = args.device != "cpu"
    for name, (preset, overrides) in (CONFIGS | (GPU_CONFIGS if on_gpu else {})).items():
        measure(name, preset, overrides, args.rounds, args.device)
    if not on_gpu:
        paper_scale_extras()


if __name__ == "__main__":
    main()

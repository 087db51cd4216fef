"""The peer on the same step: our vanilla GAN step beside BasicSR's own RealESRGANModel step (ms/step, ratio).

Both sides train the same architectures with the same losses, batch and precision: an RRDBNet 64/23/32 G (x4; fewer
blocks with --blocks, for the GPU check's dry run), a
U-Net D with spectral norm (64 features), L1 pixel loss (weight 1), the pre-activation VGG19 perceptual loss (conv1_2,
conv2_2 at 0.1; conv3_4, conv4_4, conv5_4 at 1; L1; weight 1), the vanilla GAN loss (BCE with logits, weight 0.1),
Adam (lr 1e-4, betas 0.9/0.99) for G and D, and an EMA copy of G (0.999). fp32 on both: BasicSR's model has no
autocast. The VGG19 is randomly initialised on both sides (no weights file is downloaded here; speed does not
depend on the weights).

Ours: the `vanilla` method's stage-3 step (G and D) through `Engine.train_step`. BasicSR's:
`RealESRGANModel.optimize_parameters` after the pair is set on the model (`lq`, `gt`), which is what its
`feed_data` leaves there once its own GPU degradation ran; that degradation is not part of the step (ours is timed
apart, benchmarks.gpu_degrade), and its GT sharpening is off (`*_gt_usm: False`) so both train on the same pair.
One step of each per round, interleaved, the order alternating; the ratio is per round (ours / BasicSR's).

    python -m benchmarks.peer_step [--rounds N] [--gt 64] [--batch 2] [--device cpu|cuda] [--blocks 23]
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import sys
import types
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torchvision

if __package__ in (None, ""):  # run as `python benchmarks/peer_step.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_common import cache_override, record
from benchmarks.harness import PAPER_SCALE, command_line, experiment, interleaved, median_ci, ms, quiet_cpu, ratios

NUM_FEAT, NUM_BLOCK, NUM_GROW, D_FEAT = 64, 23, 32, 64
LAYERS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}
OURS = (
    "method=vanilla", "student.width=1", "student_d.width=1", "optim.amp=false", "optim.channels_last=false",
    "optim.lr_g=1e-4", "optim.lr_d=1e-4", "optim.ema=0.999", "loss.pixel.weight=1", "loss.perceptual.weight=1",
    "loss.gan.weight=0.1", "loss.gan.type=vanilla", "loss.r1.weight=0", "data.degradation=bicubic",
)


def import_basicsr() -> Any:
    """basicsr 1.4.2's RealESRGANModel, with the two shims its import needs on today's torchvision: the module
    `functional_tensor` (merged into `functional`, which keeps `rgb_to_grayscale`), and `vgg19(pretrained=...)`
    (a keyword torchvision no longer takes; False here: nothing is downloaded)."""
    sys.modules.setdefault("torchvision.transforms.functional_tensor", torchvision.transforms.functional)
    from basicsr.archs import vgg_arch
    from basicsr.models.realesrgan_model import RealESRGANModel

    vgg_arch.vgg = types.SimpleNamespace(vgg19=lambda pretrained: torchvision.models.vgg19(weights=None))
    return RealESRGANModel


def basicsr_options(device: torch.device, blocks: int) -> dict[str, Any]:
    """Real-ESRGAN's training options (options/train_realesrgan_x4plus.yml), reduced to the step's own settings."""
    return {
        "is_train": True, "dist": False, "num_gpu": int(device.type == "cuda"), "scale": 4,
        "l1_gt_usm": False, "percep_gt_usm": False, "gan_gt_usm": False, "high_order_degradation": False,
        "path": {},
        "network_g": {"type": "RRDBNet", "num_in_ch": 3, "num_out_ch": 3, "num_feat": NUM_FEAT,
                      "num_block": blocks, "num_grow_ch": NUM_GROW, "scale": 4},
        "network_d": {"type": "UNetDiscriminatorSN", "num_in_ch": 3, "num_feat": D_FEAT, "skip_connection": True},
        "train": {
            "ema_decay": 0.999,
            "optim_g": {"type": "Adam", "lr": 1e-4, "weight_decay": 0, "betas": [0.9, 0.99]},
            "optim_d": {"type": "Adam", "lr": 1e-4, "weight_decay": 0, "betas": [0.9, 0.99]},
            "scheduler": {"type": "MultiStepLR", "milestones": [400000], "gamma": 0.5},
            "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"},
            "perceptual_opt": {"type": "PerceptualLoss", "layer_weights": LAYERS, "vgg_type": "vgg19",
                               "use_input_norm": True, "perceptual_weight": 1.0, "style_weight": 0,
                               "range_norm": False, "criterion": "l1"},
            "gan_opt": {"type": "GANLoss", "gan_type": "vanilla", "real_label_val": 1.0, "fake_label_val": 0.0,
                        "loss_weight": 0.1},
            "net_d_iters": 1, "net_d_init_iters": 0,
        },
    }


@contextlib.contextmanager
def cuda_calls_stay_put(device: torch.device) -> Iterator[None]:
    """RealESRGANModel.__init__ moves its JPEG and sharpening helpers with `.cuda()`: on a CPU run they stay."""
    if device.type == "cuda":
        yield
        return
    real = torch.nn.Module.cuda
    torch.nn.Module.cuda = lambda module, *args, **kwargs: module
    try:
        yield
    finally:
        torch.nn.Module.cuda = real


def basicsr_step(pair: dict[str, torch.Tensor], device: torch.device, blocks: int) -> Callable[[], None]:
    model_class = import_basicsr()
    logging.getLogger("basicsr").setLevel(logging.ERROR)  # it logs every network's structure
    with cuda_calls_stay_put(device):
        model = model_class(basicsr_options(device, blocks))
    model.lq, model.gt = pair["lr"], pair["hr"]
    model.gt_usm = pair["hr"]  # what feed_data sets; unread with *_gt_usm off
    steps = iter(range(1, 10**9))
    return lambda: model.optimize_parameters(next(steps))


def our_step(pair: dict[str, torch.Tensor], device: torch.device, batch: int, gt: int,
             blocks: int) -> Callable[[], None]:
    sizes = (f"data.batch_size={batch}", f"data.gt_size={gt}", f"student.num_block={blocks}")
    exp = experiment("realesrgan-x4", [*PAPER_SCALE, *OURS, *sizes, *cache_override()],
                     device=device.type)
    assert exp.method.perceptual.layers == LAYERS  # the preset's perceptual layers are BasicSR's
    engine = exp.engine
    s3 = next(s for s in engine.stages if s.name == "s3")
    return lambda: engine.train_step(s3, pair)


def synchronized(step: Callable[[], None], device: torch.device) -> Callable[[], None]:
    def run() -> None:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def main() -> None:
    parser = command_line(__doc__, rounds=10)
    parser.add_argument("--gt", type=int, default=64, help="GT side (Real-ESRGAN: 256)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (Real-ESRGAN: 12)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--blocks", type=int, default=NUM_BLOCK, help=f"RRDB blocks of G (Real-ESRGAN: {NUM_BLOCK})")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        quiet_cpu()
    torch.manual_seed(0)
    hr = torch.rand(args.batch, 3, args.gt, args.gt, device=device)
    pair = {"hr": hr, "lr": torch.nn.functional.avg_pool2d(hr, 4)}
    steps = {
        "ours": synchronized(our_step(pair, device, args.batch, args.gt, args.blocks), device),
        "basicsr": synchronized(basicsr_step(pair, device, args.blocks), device),
    }
    times = interleaved(steps, args.rounds)
    wall = median_ci(ratios(times.wall, "ours", "basicsr"))
    cpu = median_ci(ratios(times.cpu, "ours", "basicsr"))
    fastest = min(times.wall["ours"]) / min(times.wall["basicsr"])
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"GAN step, RRDBNet {NUM_FEAT}/{args.blocks}/{NUM_GROW} G + U-Net D {D_FEAT}, batch {args.batch}, GT "
          f"{args.gt}, fp32, {where}, torch {torch.__version__}, {args.rounds} rounds interleaved")
    for name in steps:
        print(f"  {name:<8} wall {ms(times.wall[name])}, fastest {min(times.wall[name]) * 1e3:.1f} ms; "
              f"process CPU time {ms(times.cpu[name])}")
    print(f"  ours / basicsr, median of per-round ratios: wall {wall[0]:.3f} (95% CI {wall[1]:.3f}-{wall[2]:.3f}), "
          f"process CPU time {cpu[0]:.3f} (95% CI {cpu[1]:.3f}-{cpu[2]:.3f}); fastest round over fastest round: "
          f"{fastest:.3f}")
    record("peer-step", {
        "device": where, "g_blocks": args.blocks, "batch": args.batch, "gt": args.gt, "rounds": args.rounds,
        "ms_per_step": {name: 1e3 * statistics.median(t) for name, t in times.wall.items()},
        "ours_over_basicsr": wall[0], "ci95": list(wall[1:]), "cpu_time_ratio": cpu[0], "fastest_ratio": fastest,
    })


if __name__ == "__main__":
    main()

"""GPU: `sdakd train --preset realesrgan-x4` shortened to a few hundred steps, with the Real-ESRGAN x4plus teacher
converted from the carried registry package (`teacher.weights: realesrgan-x4plus`): its PSNR-Y next to the
teacher's and bicubic's, and a sample image (LR | bicubic | student | teacher | GT) of the trained student.

The command is the CLI's own (`sdakd.cli.main`), run in this process; no Ray, no MLflow. Changed from the preset:
stages 50/50/200 steps (300 in all: the GAN stage longest); no teacher-D weights (trained here against the frozen
teacher, 50 steps, as x4plus-cpu does with 100); no perceptual term (no VGG19 weights file travels: a random VGG carries no signal); run and cache folders
under WORK_DIR. SDAKD_GPU_CHECK_DRY=1 without a GPU: 2 steps a stage, 2 teacher-D steps, GT 32 crops, on the CPU.

    python -m benchmarks.gpu_train WORK_DIR SAMPLE_PNG
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/gpu_train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_common import check_device, record
from sdakd import cli

PRESET = ("teacher.weights=realesrgan-x4plus", "teacher.d_weights=null", "loss.perceptual.weight=0",
          "run.checkpoint_every=1000")
GPU = ("stages.s1.iters=50", "stages.s2.iters=50", "stages.s3.iters=200", "teacher.pretrain.d_iters=50",
       "run.log_every=50", "data.val_max_side=256", "run.eval_max_images=4", "run.latency_repeats=5")
DRY = ("stages.s1.iters=2", "stages.s2.iters=2", "stages.s3.iters=2", "teacher.pretrain.d_iters=2",
       "teacher.pretrain.batch_size=1", "data.gt_size=32", "data.batch_size=2", "run.log_every=1",
       "data.val_max_side=32", "run.eval_max_images=1", "run.latency_repeats=1", "run.device=cpu")


def draw_sample(run_dir: Path, path: Path) -> None:
    """The trained student's samples, through the validator the run scored it with."""
    from sdakd.config.load import load_config
    from sdakd.engine.device import resolve_device
    from sdakd.evaluate.checkpoint import trained_student
    from sdakd.evaluate.validator import Validator
    from sdakd.teacher.cache import prepare_inputs
    from sdakd.tracking.plots import sample_grid

    cfg = load_config(path=run_dir / "config.yaml")
    device = resolve_device(cfg.run.device)
    data, teacher = prepare_inputs(cfg, device)
    sample_grid(Validator(cfg, data, teacher, device), path, trained_student(cfg, run_dir).to(device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a scratch folder for the run and its caches")
    parser.add_argument("sample", type=Path, help="where the sample image goes")
    args = parser.parse_args()
    device = check_device()
    run_dir = args.work / "run"
    sets = [*PRESET, *(GPU if device.type == "cuda" else DRY), f"run.out_dir={run_dir}",
            f"run.cache_dir={args.work / 'cache'}"]
    argv = ["train", "--preset", "realesrgan-x4", *(arg for value in sets for arg in ("--set", value))]
    print("sdakd " + " ".join(argv), flush=True)
    began = time.perf_counter()
    status = cli.main(argv)
    if status:
        sys.exit(status)
    wall_s = time.perf_counter() - began
    draw_sample(run_dir, args.sample)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    student, references = metrics["student"], metrics["references"]
    figures = {
        "command": "sdakd " + " ".join(argv), "wall_s": wall_s, "timings_s": metrics["info"]["timings_s"],
        "student_psnr_y": student["psnr_y"], "student_ssim_y": student["ssim_y"],
        "student_psnr_y_vs_teacher": student.get("psnr_y_vs_teacher"),
        "teacher_psnr_y": references.get("teacher_psnr_y"), "bicubic_psnr_y": references["bicubic_psnr_y"],
        "test": metrics.get("test"), "cost": metrics.get("cost"),
    }
    print(json.dumps(figures, indent=2, default=str))
    print(f"wrote {args.sample}")
    record("train", figures)


if __name__ == "__main__":
    main()

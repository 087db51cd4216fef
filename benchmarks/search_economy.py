"""Search economy: the same 16-trial search with the stage-prefix cache + ASHA, and without either (every trial
trains every stage from scratch). Prints, for each, the stage-iterations trained, the wall time and the best
objective found, and the ratio of the two compute totals (target: <= 40 % at an equal-or-better best).

The space is the smoke space's tiny budget with parameters chosen the way real searches look: the learning rate
(decides stage 1) and the student-D width (stage 2, where the D warms up) take a few values each, the GAN weight
(stage 3 only) is continuous, so trials share stage prefixes and ASHA can rank them after each stage. The teacher
is pretrained once, before both searches, and counted in neither.

    python benchmarks/search_economy.py [--trials 16] [--out runs/search-economy]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ray
import yaml

from sdakd.data.dataset import ensure_dataset

from sdakd.engine.device import resolve_device

from sdakd.teacher.cache import build_teacher
from sdakd.ray_adapter.search import search
from sdakd.config.project import find_project_yaml
from sdakd.search.space import SPACES_DIR, load_space

PARAMETERS = {
    "optim.lr_g": {"type": "choice", "values": [1.0e-5, 5.0e-4, 2.0e-3]},
    "student_d.width": {"type": "choice", "values": [0.25, 0.5]},
    "loss.gan.weight": {"type": "loguniform", "low": 1.0e-3, "high": 0.3},
}
STAGE_ITERS = {"stages.s1.iters": 6, "stages.s2.iters": 6, "stages.s3.iters": 6}


def run(space, base, label: str) -> dict:
    started = time.perf_counter()
    summary = search(space, base)
    wall = time.perf_counter() - started
    trials = summary.trials
    ends = [t["metrics"]["timestamp"] for t in trials]
    starts = [t["metrics"]["timestamp"] - t["metrics"]["time_total_s"] for t in trials]
    return {
        "search": label,
        "trials": len(trials),
        "stopped_early": sum(not t["final"] for t in trials),
        "stage_iterations": sum(t["metrics"]["trained_iters"] or 0 for t in trials),
        "wall_s": round(wall, 1),
        # without the fixed start-up of a search (Tune, the trial actors' imports): first trial start to last end
        "trials_wall_s": round(max(ends) - min(starts), 1),
        "trial_seconds": round(sum(t["metrics"]["time_total_s"] for t in trials), 1),
        "best_psnr_y": summary.best[0]["metrics"]["psnr_y"] if summary.best else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("runs/search-economy"))
    args = parser.parse_args()
    out = (args.out / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True)
    spec = yaml.safe_load(find_project_yaml(SPACES_DIR, "smoke", "search space").read_text())
    spec |= {"parameters": PARAMETERS, "samples": args.trials}
    spec["base"]["overrides"] |= STAGE_ITERS
    path = out / "economy.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    # Ray, the dataset and the teacher are set up once, outside both timings.
    ray.init(address="local", num_cpus=spec["concurrency"], include_dashboard=False)
    _, base = load_space(str(path), [f"run.cache_dir={out / 'cache'}"])
    build_teacher(base, ensure_dataset(base), resolve_device(base.run.device))

    results = []
    for label, changes in (("cache_asha", {}), ("naive", {"scheduler": None, "prefix_cache": False})):
        where = [f"run.cache_dir={out / 'cache'}", f"run.out_dir={out / label}", f"run.tracking_uri={out / 'mlflow.db'}"]
        space, base = load_space(str(path), where)
        results.append(run(space.model_copy(update=changes), base, label))
        print(json.dumps(results[-1]), flush=True)
    economic, naive = results
    ratio = economic["stage_iterations"] / naive["stage_iterations"]
    share = {k: f"{economic[k] / naive[k]:.0%}" for k in ("wall_s", "trials_wall_s", "trial_seconds")}
    print(f"compute: {ratio:.0%} of naive (target <= 40 %); time, as a share of naive: {share}; "
          f"best psnr_y {economic['best_psnr_y']:.4f} vs naive {naive['best_psnr_y']:.4f}")


if __name__ == "__main__":
    main()

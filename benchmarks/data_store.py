"""The data store at paper scale: this store (memory-mapped raw pixels) beside the previous one (Parquet of PNGs,
each rank decoding its whole split into memory; commit PREVIOUS, checked out from git into a temporary folder) on
a synthetic DF2K-like set, in the same run.

Measured per store: build time and disk; start-up time and private memory (RssAnon) per rank for 1, 2 and 4 local
ranks started together; patches/s at GT 256, batch 12 for bicubic and second order on the loader path
(StepBatches[step]) and the device path (StepBatches.clean + degrade_on_device, here on the CPU), one thread, the
two stores' processes timed in alternating rounds. Then the extrapolation to DF2K and FFHQ-1024.

    python -m benchmarks.data_store [--images 200] [--size 2040x1356] [--folder DIR] [--rounds 3] [--parts build,ranks,throughput]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PREVIOUS = "30bc196"  # the last commit with the Parquet store
# Public figure: RealESRNet, 1,000K iterations at batch 12 per GPU on 4 V100s, took "about 6-7 days" (the
# Real-ESRGAN author, xinntao/Real-ESRGAN issue #38); RealESRGAN's 400K took 4-5 days.
V100_PATCHES_PER_S = 1_000_000 * 12 / (6.5 * 86400)  # per GPU: ~21.4
H100_OVER_V100 = 4.0  # an assumption (dense bf16/fp32 throughput ratio is ~3-6x); stated where it is used
CORES_PER_GPU = 14  # a DGX H100: 112 cores for 8 GPUs
MEMORY_GB = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9 * 0.4  # what the other jobs on this machine leave

RANK = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    from sdakd.data import StepBatches
    def anon(): return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon")).split()[1]) / 1024
    base, imported = anon(), time.perf_counter()
    b = StepBatches(sys.argv[1], batch_size=12, gt_size=256, scale=4, rank=int(sys.argv[2]), world_size=int(sys.argv[3]))
    ready = time.perf_counter()
    for step in range(3):
        b[step]
    rss = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1e6
    print(json.dumps({"startup_s": ready - imported, "anon_growth_mib": anon() - base, "rss_gb": rss}))
""")

# one process per store: builds its batches once, then answers "loader|clean|device bicubic|second_order STEPS" lines
SERVER = textwrap.dedent("""
    import json, sys, time, torch
    torch.set_num_threads(1)
    from sdakd.data import StepBatches
    from sdakd.data.degrade_device import degrade_on_device
    sets = {d: StepBatches(sys.argv[1], batch_size=12, gt_size=256, scale=4, degradation=d) for d in ("bicubic", "second_order")}
    print("ready", flush=True)
    step = 0
    for line in sys.stdin:
        path, degradation, count = line.split()
        t, cpu = time.perf_counter(), time.process_time()
        for _ in range(int(count)):
            b = sets[degradation]
            if path == "loader":
                b[step]
            elif path == "clean":  # what a loader process does when the device degrades
                b.clean(step)
            else:
                degrade_on_device(b.clean(step), 4, torch.device("cpu"))
            step += 1
        # patches per second of this process's CPU time (what one core gives, whatever else the machine runs)
        print(json.dumps(12 * int(count) / (time.process_time() - cpu)), flush=True)
""")


def show(store: str, figures: dict) -> dict:
    print(store, json.dumps(figures), flush=True)
    return figures


def make_images(folder: Path, count: int, size: tuple[int, int]) -> Path:
    """`count` photo-like PNGs (gradients, texture and noise) of `size`; kept between runs."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [k for k in range(count) if not (folder / f"{k:04d}.png").exists()]
    with Pool(os.cpu_count()) as pool:
        pool.starmap(_one_image, [(folder, k, size) for k in todo])
    return folder


def _one_image(folder: Path, k: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(k)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 6.3, 3)
    rgb = [127 + 100 * np.sin(x / (40 + 30 * c) + y / (55 + 20 * k % 7) + phase[c]) for c in range(3)]
    noise = rng.normal(0, 12, (h, w, 3))
    pixels = np.clip(np.stack(rgb, -1) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / f"{k:04d}.png", compress_level=1)


def previous_platform(tmp: Path) -> Path:
    """The previous store's code, from git."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS, "platform/sdakd"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    return tmp / "platform"


def run_py(platform: Path, code: str, *args: str, **kw) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(platform), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, **kw)


def build(platform: Path, images: Path, out: Path, jobs: int | None) -> dict:
    extra = "" if jobs is None else f", jobs={jobs}"
    code = (f"import sys, time; from sdakd.data import build_dataset; t = time.perf_counter(); "
            f"build_dataset(sys.argv[1], sys.argv[2], max_side=None{extra}); print(time.perf_counter() - t)")
    shutil.rmtree(out, ignore_errors=True)
    proc = run_py(platform, code, out, images)
    seconds = proc.communicate()[0].split()[-1]
    if proc.returncode:
        raise SystemExit(f"build failed in {platform}")
    disk = sum(p.stat().st_size for p in out.iterdir())
    return {"build_s": float(seconds), "disk_gb": disk / 1e9}


def ranks(platform: Path, root: Path, world: int) -> dict:
    procs = [run_py(platform, RANK, root, r, world) for r in range(world)]
    results = [json.loads(p.communicate()[0].splitlines()[-1]) for p in procs]
    return {key: max(r[key] for r in results) for key in results[0]}


def throughput(platforms: dict[str, Path], roots: dict[str, Path], rounds: int) -> dict[str, dict[str, float]]:
    servers = {name: run_py(platforms[name], SERVER, roots[name], stdin=subprocess.PIPE) for name in platforms}
    for server in servers.values():
        assert server.stdout.readline().strip() == "ready"
    variants = [("loader", "bicubic", 12), ("loader", "second_order", 4), ("clean", "second_order", 12),
                ("device", "second_order", 4)]
    rates: dict[str, dict[str, list[float]]] = {name: {} for name in servers}
    for r in range(rounds + 1):  # round 0 warms up
        for name in (list(servers) if r % 2 else list(servers)[::-1]):
            for path, degradation, count in variants:
                servers[name].stdin.write(f"{path} {degradation} {count}\n")
                servers[name].stdin.flush()
                rate = json.loads(servers[name].stdout.readline())
                if r:
                    rates[name].setdefault(f"{path} {degradation}", []).append(rate)
    for server in servers.values():
        server.stdin.close()
        server.wait()
    return {name: {k: statistics.median(v) for k, v in by.items()} for name, by in rates.items()}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", default="2040x1356")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "sdakd-df2k-like")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="build,ranks,throughput",
                        help="what to measure (without build: the stores already in --folder)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    began = time.perf_counter()
    images = make_images(args.folder / "images", args.images, size)
    source_gb = sum(p.stat().st_size for p in images.iterdir()) / 1e9
    print(f"{args.images} images of {size[0]}x{size[1]} in {images} ({source_gb:.2f} GB of PNG), "
          f"made in {time.perf_counter() - began:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        platforms = {"previous": previous_platform(Path(tmp)), "this": REPO / "platform"}
        roots = {name: args.folder / f"store-{name}" for name in platforms}
        jobs = os.cpu_count() or 1
        results: dict[str, dict] = {"previous": {}, "this": {}}
        if "build" in args.parts:
            results["previous"] = show("previous", build(platforms["previous"], images, roots["previous"], None))
            results["this"] = show("this", build(platforms["this"], images, roots["this"], 1))
            results["this"] |= show("this", {f"build_s_{jobs}_jobs": build(platforms["this"], images, roots["this"],
                                                                            jobs)["build_s"]})
        for name in platforms if "ranks" in args.parts else ():
            for world in (1, 2, 4):
                # the previous store decodes the whole split in every rank: more ranks than memory allows are skipped
                one = results[name].get("ranks_1", {}).get("rss_gb", 0)
                if name == "previous" and world * one > MEMORY_GB:
                    show(name, {f"ranks_{world}": f"not run: needs ~{world * one:.0f} "
                                                  f"GB, this machine has {MEMORY_GB:.0f}"})
                    continue
                results[name][f"ranks_{world}"] = show(name, {f"ranks_{world}": ranks(platforms[name], roots[name],
                                                                                      world)})[f"ranks_{world}"]
        for name, rates in throughput(platforms, roots, args.rounds).items() if "throughput" in args.parts else ():
            results[name]["patches_per_s"] = show(name, {"patches_per_s": rates})["patches_per_s"]
    if args.parts == parser.get_default("parts"):
        extrapolate(results, args.images, size)
    print(f"wall {time.perf_counter() - began:.0f} s")


def extrapolate(results: dict, count: int, size: tuple[int, int]) -> None:
    this = results["this"]
    per_image_s = this["build_s"] / count  # one core
    second_order = this["patches_per_s"]["loader second_order"]
    for name, images, (w, h) in (("DF2K", 3450, (2040, 1400)), ("FFHQ-1024", 70000, (1024, 1024))):
        disk = images * w * h * 3 / 1e9
        scale = (w * h) / (size[0] * size[1])
        build_h = images * per_image_s * scale / 32 / 3600
        print(f"{name}: {images} x {w}x{h} x 3 B = {disk:.1f} GB on disk and at most that in each node's page cache "
              f"(shared by its ranks; private per rank as measured, independent of the dataset); build "
              f"{images} x {per_image_s * scale:.2f} s / 32 cores = {build_h:.2f} h")
    need = V100_PATCHES_PER_S * H100_OVER_V100
    cores = 5 * need / second_order
    print(f"one GPU consumes ~{V100_PATCHES_PER_S:.1f} patches/s (V100, public figure) ~ {need:.0f} (H100, x"
          f"{H100_OVER_V100:g} assumed); 5x that at {second_order:.1f} second-order patches/s per core needs "
          f"{cores:.1f} cores per GPU (a DGX H100 has {CORES_PER_GPU}); with the degradation on the device a loader "
          f"core serves {this['patches_per_s']['clean second_order']:.1f} patches/s (clean crops + draws): "
          f"{5 * need / this['patches_per_s']['clean second_order']:.2f} cores per GPU for 5x")


if __name__ == "__main__":
    main()

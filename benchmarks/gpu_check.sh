#!/usr/bin/env bash
# The GPU check, for the first machine with a CUDA GPU (issue 18): install, the CUDA tests, MLflow's GPU metrics,
# then benchmarks.gpu_step (training step variants, GPU degradation, teacher and student latency). About 8 minutes of
# GPU time at most: every phase has its own time limit, and one that fails or runs out leaves the others running.
#
#   bash benchmarks/gpu_check.sh [OUT]      # OUT: the output folder (default: $OUT, else runs/gpu-check-<time>)
#
# Everything lands in OUT: one log per phase, summary.txt (each phase's exit status and seconds). Without a GPU the
# CUDA tests skip and the GPU phases say so; SDAKD_SKIP_INSTALL=1 skips the install (an installed checkout).
set -uo pipefail

cd "$(dirname "$0")/.."
out="${1:-${OUT:-runs/gpu-check-$(date -u +%Y%m%d-%H%M%S)}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
summary="$out/summary.txt"
: > "$summary"
failed=0

# phase NAME SECONDS COMMAND...: runs COMMAND with a time limit, its output in OUT/NAME.log, its status in summary.txt
phase() {
    local name="$1" limit="$2"
    shift 2
    local began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    local note=""
    [ "$rc" -eq 124 ] && note=" (time limit ${limit}s reached)"
    echo "$name: exit $rc in $((SECONDS - began)) s$note" | tee -a "$summary"
    [ "$rc" -ne 0 ] && failed=1
    return 0
}

if [ -f .venv/bin/activate ]; then
    . .venv/bin/activate
fi

{
    date -u
    git rev-parse HEAD 2>/dev/null
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
} > "$out/machine.txt"

if [ "${SDAKD_SKIP_INSTALL:-0}" = 1 ]; then
    echo "install: skipped (SDAKD_SKIP_INSTALL=1)" | tee -a "$summary"
else
    # Offline (a GPU machine without a package index), the installed dependencies stay and only sdakd is linked.
    phase install 120 bash -c 'pip install -e ".[dev,gpu]" || pip install --no-deps --no-build-isolation -e .'
fi

python - > "$out/torch.txt" 2>&1 <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs: {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    print(f"  cuda:{i} {torch.cuda.get_device_name(i)}")
EOF
cat "$out/torch.txt"
has_gpu=$(python -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

# The tests marked `cuda` (they skip without a GPU); -rs names every skip and its reason.
phase cuda-tests 200 env OMP_NUM_THREADS=4 python -m pytest -q -m cuda -rs -p no:cacheprovider \
    --junitxml="$out/cuda-tests.xml" tests/test_gpu_readiness.py

# MLflow's system metrics as a tracked run logs them (GPU utilisation and memory need nvidia-ml-py), around a few
# seconds of GPU work.
phase system-metrics 60 python - "$out" <<'EOF'
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

# The eager variants first (a minute or two), then the torch.compile ones, whose compiling takes minutes.
if [ "$has_gpu" = 1 ]; then
    phase gpu-step 150 python -m benchmarks.gpu_step --compile no
    phase gpu-step-compiled 210 python -m benchmarks.gpu_step --compile only
else
    echo "gpu-step: skipped (no CUDA GPU visible: torch.cuda.is_available() is False)" | tee -a "$summary"
fi

echo "outputs in $out"
exit $failed

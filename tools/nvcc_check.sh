#!/usr/bin/env bash
# Compiles every csrc/cuda/*.cu with nvcc for sm_80 and sm_90 against the installed torch's headers
# (a CPU wheel is enough): how CUDA code is checked on machines without a GPU. Nothing is run.
# Usage: tools/nvcc_check.sh [file.cu ...]
# Environment: TORCH_INCLUDE (another torch's include/ folder, tools/torch_headers_check.sh),
# NVCC_ARCHS (default "80 90").
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if [ ! -x "$NVCC" ]; then echo "nvcc_check: nvcc not found, skipped"; exit 0; fi
TORCH_INC=${TORCH_INCLUDE:-$(python -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")}
read -r -a archs <<< "${NVCC_ARCHS:-80 90}"
gencode=(); for a in "${archs[@]}"; do gencode+=(-gencode "arch=compute_$a,code=sm_$a"); done
label=$(printf 'sm_%s ' "${archs[@]}")
files=("$@"); [ ${#files[@]} -gt 0 ] || files=(csrc/cuda/*.cu)
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
for f in "${files[@]}"; do
  start=$(date +%s)
  "$NVCC" -c -std=c++17 -O2 --expt-relaxed-constexpr -Xcompiler -fPIC "${gencode[@]}" \
    -DTORCH_TARGET_VERSION=0x020a000000000000 -DUSE_CUDA -I csrc -I "$TORCH_INC" \
    "$f" -o "$out/$(basename "$f").o"
  echo "nvcc_check: $f compiled for ${label}against $TORCH_INC in $(( $(date +%s) - start )) s"
done

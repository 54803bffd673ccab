#!/usr/bin/env bash
# Compiles csrc/ against the headers of the older torch releases reidkern promises to build with:
# 2.10 (the oldest, pyproject's torch>=2.10) and 2.11 (the GPU check machine's, tools/gpu_check.sh).
# The build's TORCH_TARGET_VERSION (2.10) hides the stable-ABI functions newer than 2.10 in the
# installed torch's headers, but not everything differs by that switch: torch <= 2.11's bundled
# pybind11 refuses TORCH_TARGET_VERSION, and STABLE_TORCH_ERROR_CODE_CHECK only exists from 2.12.
# Only a compile against the old headers themselves shows such breaks.
#
# The headers come from torch's macOS arm64 wheel on PyPI (CPU-only, ~80 MB, `pip download`,
# nothing installed; its include/ holds the same stable-ABI headers as the Linux wheels).
# C++: g++ -fsyntax-only of every csrc/*.cpp and csrc/cpu/*.cpp for each version; CUDA:
# tools/nvcc_check.sh for sm_90 against the last version's headers (when nvcc is found).
# Usage: tools/torch_headers_check.sh [VERSION ...]   (default: 2.10.0 2.11.0)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
versions=("$@"); [ ${#versions[@]} -gt 0 ] || versions=(2.10.0 2.11.0)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# Python's headers for build_info.cpp's pybind11 (torch's include/ holds its own pybind11 copy)
py_inc=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
status=0
for v in "${versions[@]}"; do
  d="$work/$v"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform macosx_11_0_arm64 \
    --python-version 3.12 -d "$d" "torch==$v"
  (cd "$d" && "$PY" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall(members=[n for n in z.namelist() if n.startswith('torch/include/')])" ./torch-*.whl)
  inc="$d/torch/include"
  for f in csrc/*.cpp csrc/cpu/*.cpp; do
    if ! g++ -fsyntax-only -std=gnu++17 -fvisibility=hidden -DTORCH_TARGET_VERSION=0x020a000000000000 \
        -DREIDKERN_TORCH_VERSION='"check"' -DREIDKERN_CXX_COMPILER='"check"' \
        -I "$inc" -I "$inc/torch/csrc/api/include" -I csrc -isystem "$py_inc" "$f"; then
      echo "torch_headers_check: $f does not compile against torch $v's headers"; status=1
    fi
  done
  echo "torch_headers_check: csrc/*.cpp, csrc/cpu/*.cpp checked against torch $v's headers"
  last_inc=$inc
done
TORCH_INCLUDE="$last_inc" NVCC_ARCHS=90 tools/nvcc_check.sh || status=1
exit $status

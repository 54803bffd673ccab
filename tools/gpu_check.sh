#!/usr/bin/env bash
# The GPU check, sized for the machine reidkern is checked on (one NVIDIA H200, 16 cores, Python 3.12,
# its own torch 2.11 + triton 3.6, no network) and for 8 minutes in all:
#   1. build reidkern._C in place for sm_90 only with CMake against the machine's torch (no pip build,
#      nothing downloaded);
#   2. every CUDA and compiled-Triton test: the cuda-* device x backend cases of the op, layer and
#      loss tests (the test files that use reidkern.testing.device_backend_cases),
#      REIDKERN_REQUIRE_NATIVE=1;
#   3. the GPU benchmark set: `reidkern bench`'s representative set of each op benchmark file
#      (eager, SDPA, torch.compile, reidkern-cuda, reidkern-triton), one file at a time so a run cut
#      short keeps the files it finished.
# Writes benchmarks/results/<device>/: env.json (device, capability, versions, git revision),
# build.log, tests.log, bench-<file>.json, report.md, speedup.png (with matplotlib), summary.txt.
# Every step prints "[gpu_check m:ss] ..." as it starts and ends, so a cut-off run still says what passed.
#
# Usage (from anywhere):  bash tools/gpu_check.sh [--quick] [--dry-run]
#   --quick      build and tests only (no benchmarks)
#   --dry-run    check the set-up and print each step's command without building or running
#   --fetch-wheels  on a machine WITH network: download into .whl/ the wheels the GPU machine lacks
#                (pytest, pytest-benchmark, pytest-xdist, numpy for CPython 3.12, manylinux x86_64);
#                carry .whl/ along, and step 0 installs them there with pip --no-index.
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (default 480), MAX_JOBS (default: cores).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
QUICK=0; DRY=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --dry-run) DRY=1 ;;
    --fetch-wheels)
      mkdir -p .whl
      exec "$PY" -m pip download -d .whl --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        pytest pytest-benchmark pytest-xdist numpy ;;
    *) echo "gpu_check: unknown argument $arg (--quick, --dry-run, --fetch-wheels)"; exit 2 ;;
  esac
done
export HF_HUB_OFFLINE=1 PIP_NO_INDEX=1 PYTHONDONTWRITEBYTECODE=1
START=$(date +%s)
say() { local t=$(( $(date +%s) - START )); printf '[gpu_check %d:%02d] %s\n' $((t / 60)) $((t % 60)) "$*"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
SUMMARY=()

# ---- 0. the machine: a GPU, its torch and triton, the test tools ------------------------------
if ! "$PY" -c "import pytest, pytest_benchmark, numpy" 2>/dev/null; then
  if [ -d .whl ]; then
    say "installing the carried wheels from .whl/ (pip --no-index)"
    "$PY" -m pip install -q --no-index --find-links .whl pytest pytest-benchmark numpy \
      $(ls .whl | grep -q xdist && echo pytest-xdist) || { say "FAILED: wheels from .whl/"; exit 1; }
  else
    say "FAILED: pytest, pytest-benchmark and numpy are needed; run tools/gpu_check.sh --fetch-wheels on a machine with network and carry .whl/"
    exit 1
  fi
fi
read -r device versions < <("$PY" -c "
import importlib.util, torch
name = torch.cuda.get_device_name(0).replace(' ', '-') if torch.cuda.is_available() else '-'
triton = __import__('triton').__version__ if importlib.util.find_spec('triton') else 'none'
print(name, f'torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton}')")
[ "$device" = "-" ] && device=""
if [ -z "$device" ]; then
  [ "$DRY" = 1 ] || { say "FAILED: no CUDA device visible to torch"; exit 1; }
  device="dry-run-no-gpu"
fi
out="$PWD/benchmarks/results/$device"
[ "$DRY" = 1 ] && out="$(mktemp -d)/$device"  # a dry run leaves nothing in the checkout
mkdir -p "$out"
say "device $device; $versions; results in $out"
# What the build and the compiled-Triton tests need, checked before minutes go into the build (a
# missing piece would otherwise show up as a failed build or as silently skipped Triton cases).
missing=()
command -v cmake >/dev/null || missing+=("cmake")
command -v ninja >/dev/null || missing+=("ninja")
[ -x "${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}" ] || missing+=("nvcc")
"$PY" -c "import pybind11" 2>/dev/null || missing+=("pybind11 (a wheel in .whl/)")
"$PY" -c "import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))" \
  2>/dev/null || missing+=("Python.h of $("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')")
"$PY" -c "import triton" 2>/dev/null || missing+=("triton (the compiled-Triton tests)")
if [ ${#missing[@]} -gt 0 ]; then
  say "FAILED: missing on this machine: ${missing[*]}"
  [ "$DRY" = 1 ] || exit 1
fi

run() {  # run NAME TIMEOUT LOG CMD...: one step, time-boxed, logged, its outcome in the summary
  local name=$1 limit=$2 log=$3; shift 3
  if [ "$DRY" = 1 ]; then say "would run ($name, ${limit}s): $*"; SUMMARY+=("$name: dry run"); return 0; fi
  say "$name: start (at most ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  case $rc in
    0) say "$name: passed"; SUMMARY+=("$name: passed") ;;
    124|137) say "$name: CUT OFF after ${limit}s"; SUMMARY+=("$name: cut off after ${limit}s") ;;
    *) say "$name: FAILED (exit $rc)"; SUMMARY+=("$name: failed (exit $rc)") ;;
  esac
  return "$rc"
}

# ---- 1. build for sm_90 with the machine's torch ------------------------------------------------
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
export PY NVCC
build() {
  local prefix bt=build/gpu_check
  prefix=$("$PY" -c "import torch, pybind11; print(torch.utils.cmake_prefix_path + ';' + pybind11.get_cmake_dir())") || return 1
  mkdir -p "$bt" && cmake -S . -B "$bt" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/reidkern" -DPython_EXECUTABLE="$(command -v "$PY")" \
    -DCMAKE_PREFIX_PATH="$prefix" -DREIDKERN_TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)')" \
    -DREIDKERN_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_COMPILER="$NVCC" >/dev/null &&
  cmake --build "$bt" -j "${MAX_JOBS:-$(nproc)}"
}
export -f build
: > "$out/build.log"
run build "$(( $(left) > 240 ? 240 : $(left) ))" "$out/build.log" bash -c build || { say "build failed: see $out/build.log"; exit 1; }
if [ "$DRY" = 0 ]; then
  PYTHONPATH=$PWD "$PY" - "$out/env.json" <<'PY' || { say "FAILED: the built library has no CUDA kernels"; exit 1; }
import json, subprocess, sys, torch
import reidkern
info = reidkern.build_info()
info.update(device=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            git_revision=subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
            git_dirty=bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                          capture_output=True, text=True).stdout.strip()))
with open(sys.argv[1], "w") as f:
    json.dump(info, f, indent=2)
print(json.dumps(info))
sys.exit(0 if info["native"] and info["with_cuda"] and "90" in ",".join(info["cuda_archs"]) else 1)
PY
fi

# ---- 2. every CUDA and compiled-Triton test -----------------------------------------------------
mapfile -t TESTS < <(grep -l device_backend_cases tests/test_*.py)
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 8)
: > "$out/tests.log"
limit=$(( $(left) - 60 )); [ "$QUICK" = 1 ] && limit=$(left)  # leave a minute for the benchmarks
run tests "$(( limit > 300 ? 300 : limit ))" "$out/tests.log" \
  env REIDKERN_REQUIRE_NATIVE=1 PYTHONPATH="$PWD" \
  "$PY" -m pytest "${TESTS[@]}" -k "cuda" -v -rfEs -p no:cacheprovider "${XDIST[@]}"

# ---- 3. the GPU benchmark set -------------------------------------------------------------------
if [ "$QUICK" = 0 ]; then
  # the op benchmarks first (short), the layer benchmarks (torch.compile of whole blocks) last
  mapfile -t BENCH < <(grep -l reidkern_providers benchmarks/bench_*.py | grep -v layers;
                       grep -l reidkern_providers benchmarks/bench_*.py | grep layers)
  for f in "${BENCH[@]}"; do
    name=$(basename "$f" .py)
    if [ "$(left)" -lt 30 ]; then say "$name: not run, the ${BUDGET}s budget is spent"; SUMMARY+=("$name: not run (budget)"); continue; fi
    # in benchmarks/, as `reidkern bench` runs: the checkout's root is not on sys.path
    run "$name" "$(( $(left) - 10 ))" "$out/bench.log" \
      env -C benchmarks PYTHONPATH="$PWD" "$PY" -m pytest "$(basename "$f")" -q -p no:cacheprovider \
      --bench-set=representative --benchmark-min-rounds=5 --benchmark-max-time=0.5 \
      --benchmark-json="$out/$name.json"
  done
  if [ "$DRY" = 0 ] && ls "$out"/bench_*.json >/dev/null 2>&1; then
    "$PY" benchmarks/report.py "$out"/bench_*.json --out "$out"
  fi
fi
printf '%s\n' "${SUMMARY[@]}" > "$out/summary.txt"
say "done in $(( $(date +%s) - START ))s; summary ($out/summary.txt):"
cat "$out/summary.txt"
! grep -q "failed" "$out/summary.txt"

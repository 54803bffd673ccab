#!/usr/bin/env bash
# On a machine with a CUDA GPU: build reidkern with its CUDA kernels, run the tests (CUDA and
# compiled-Triton ones included) and the benchmark suite, and write the results under
# benchmarks/results/<device>/ (env.json with device, versions and git revision; test log;
# benchmark JSON, report.md, speedup.png). Run from the repository root:
#   bash tools/gpu_check.sh            (REIDKERN_CUDA_ARCHS=90 to build for one arch only)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
device=$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))") || {
  echo "gpu_check: no CUDA device"; exit 1; }
out="benchmarks/results/$device"
mkdir -p "$out"
REIDKERN_WITH_CUDA=1 MAX_JOBS=${MAX_JOBS:-8} $PY setup.py -q build_ext --inplace 2>&1 | tail -5
$PY - "$out/env.json" <<'PY'
import json, subprocess, sys, torch
import reidkern
info = reidkern.build_info()
info.update(device=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            git_revision=subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                        text=True).stdout.strip())
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
PY
PYTHONPATH=. $PY -m pytest tests -q -p no:cacheprovider 2>&1 | tee "$out/tests.log" | tail -15
PYTHONPATH=. $PY -m pytest benchmarks -q -p no:cacheprovider --benchmark-min-rounds=5 \
  --benchmark-json="$out/benchmarks.json" 2>&1 | tail -5
$PY benchmarks/report.py "$out/benchmarks.json" --out "$out"

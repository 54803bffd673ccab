"""k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3): dense eager baselines vs reidkern.

Providers:
* ``eager-fp16``: the widely used published feature-based code (float32 distances, float16 V,
  full argsort; about 21 N^2 bytes) -- what users run today.
* ``reference-f64``: reidkern's float64 dense reference (the exactness oracle); heavy, so only at
  Market-1501 size with REIDKERN_BENCH_F64=1 (it needs about 4 N^2 x 8 bytes, ~12 GB).
* ``reidkern-cpp`` (CPU), ``reidkern-cuda`` / ``reidkern-triton`` (GPU only; the Triton interpreter
  is not a speed measure).

Sizes: Market-1501 (3,368 query + 15,913 gallery) at 512-d and 2048-d, MSMT17 (11,659 + 82,161) at
512-d (reidkern only: the dense code cannot hold 21 N^2 bytes). Features are clustered (ids with
~12 samples each, L2-normalised) so neighbourhoods look like ReID embeddings. Each reidkern record
stores the largest absolute difference to the eager provider's result when both ran in this
process (``max_abs_diff_vs_<provider>``).

Run the full sizes one benchmark at a time, e.g.
  PYTHONPATH=. python -m pytest benchmarks/bench_k_reciprocal.py --benchmark-min-rounds=1 \
      --benchmark-warmup=off --benchmark-max-time=0 --benchmark-json=/tmp/rerank.json
"""
import os

import pytest
import torch

from _common import device_and_backend, record, reid_features as features, reidkern_providers, run_device, smoke

from reidkern.ops.reference.k_reciprocal import (k_reciprocal_published_float16,
                                                  k_reciprocal_reference)
from reidkern.rerank import k_reciprocal

if smoke():
    SIZES = {"smoke": (23, 97, 16)}
    HEAVY = set()
else:
    SIZES = {"con-reid-512": (212, 5207, 512),  # Con-ReID's test split (the main job's dataset)
             "market-512": (3368, 15913, 512), "market-2048": (3368, 15913, 2048),
             "msmt17-512": (11659, 82161, 512)}
    HEAVY = {"msmt17-512"}  # the dense providers cannot run it

_RESULTS = {}


# `reidkern bench` without --full: the published dense code needs minutes per call at Market size on
# a 2-core CPU, too long for the default set; Market and MSMT17 sizes run with --full.
REPRESENTATIVE = {"con-reid-512"}


def _providers():
    """The dense baselines run on the CPU (their published form); reidkern on the run's device."""
    return [("eager-fp16", "cpu"), ("reference-f64", "cpu")] + [(p, run_device()) for p in reidkern_providers()]


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("provider,device", _providers())
def test_rerank(benchmark, provider, device, size):
    num_q, num_g, dim = SIZES[size]
    if provider in ("eager-fp16", "reference-f64") and size in HEAVY:
        pytest.skip("the dense N x N implementations cannot run at MSMT17 size (~21 N^2 bytes)")
    if provider == "reference-f64" and not smoke() and (
            size != "market-512" or os.environ.get("REIDKERN_BENCH_F64") != "1"):
        pytest.skip("float64 dense reference: only at market-512 with REIDKERN_BENCH_F64=1")
    qf, gf = features(num_q, num_g, dim, device)
    progress = size in HEAVY
    if provider == "eager-fp16":
        fn = lambda: k_reciprocal_published_float16(qf, gf, 20, 6, 0.3)  # noqa: E731
    elif provider == "reference-f64":
        fn = lambda: k_reciprocal_reference(qf, gf, 20, 6, 0.3)  # noqa: E731
    else:
        device, backend = device_and_backend(provider)
        fn = lambda: k_reciprocal(qf, gf, 20, 6, 0.3, backend=backend, progress=progress)  # noqa: E731
    extra = {}
    result = record(benchmark, "rerank", provider, size, fn, device, num_query=num_q,
                    num_gallery=num_g, dim=dim)
    result = result.float().cpu()
    for other, ref in _RESULTS.get(size, {}).items():
        extra[f"max_abs_diff_vs_{other}"] = float((result - ref).abs().max())
    _RESULTS.setdefault(size, {})[provider] = result
    benchmark.extra_info.update(extra)

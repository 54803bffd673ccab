"""Forward time and peak memory of each backbone on CPU (pytest-benchmark).

Run:   PYTHONPATH=. python -m pytest benchmarks/bench_backbones.py
Smoke: PYTHONPATH=. python -m pytest benchmarks/bench_backbones.py --benchmark-disable
       (one call per backbone at batch 2; also REIDKERN_BENCH_SMOKE=1)
Batch: REIDKERN_BENCH_BATCH=N (default 64, the usual ReID test batch).

Time: pytest-benchmark's statistics of one ``model(x)`` call under ``torch.inference_mode()``
in eval mode (after one warm-up call).

Memory: peak memory of one forward call as benchmarks/_common.py measures it on CPU (growth of
the resident set, sampled). The weights are allocated before the measurement and not included
(``param_mb`` reports them).
"""
import os

import pytest
import torch

from _common import record, smoke
from reidkern.models.backbones import (
    deit_small_distilled_patch16,
    osnet_x0_25,
    resnet50,
    two_stream_resnet50,
    vit_base_patch16,
)

BATCH = 2 if smoke() else int(os.environ.get("REIDKERN_BENCH_BATCH", "64"))

CASES = {
    # name: (builder, (H, W), extra forward args)
    "resnet50_ls1": (lambda: resnet50(last_stride=1, out_stages=("layer4",)), (256, 128), ()),
    "two_stream_resnet50": (lambda: two_stream_resnet50(out_stages=("layer4",)), (288, 144), ("mixed",)),
    "vit_base_patch16_s16": (lambda: vit_base_patch16((256, 128), stride_size=16), (256, 128), ()),
    "deit_small_lgur": (lambda: deit_small_distilled_patch16((384, 128), depth=11, final_norm=False), (384, 128), ()),
    "osnet_x0_25_folded": (lambda: osnet_x0_25(folded=True).eval(), (256, 128), ()),
}


@pytest.mark.parametrize("name", list(CASES))
def test_backbone_forward(benchmark, name):
    builder, hw, extra = CASES[name]
    model = builder().eval()
    x = torch.randn(BATCH, 3, *hw)
    args = (x, torch.arange(BATCH) % 2) if extra == ("mixed",) else (x,)

    def forward():
        with torch.inference_mode():
            return model(*args)

    forward()  # warm-up: first-call allocations are not part of the steady state
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    out = record(benchmark, "backbone_forward", "reidkern", f"{name} batch {BATCH} {hw[0]}x{hw[1]}",
                 forward, param_mb=round(param_mb, 1))
    assert out is not None

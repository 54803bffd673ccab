"""Forward time and peak memory of each backbone on CPU (pytest-benchmark).

Run:   PYTHONPATH=. python -m pytest benchmarks/bench_backbones.py
Smoke: PYTHONPATH=. python -m pytest benchmarks/bench_backbones.py --benchmark-disable
       (one call per backbone at batch 2; also REIDKERN_BENCH_SMOKE=1)
Batch: REIDKERN_BENCH_BATCH=N (default 64, the usual ReID test batch).

Time: pytest-benchmark's statistics of one ``model(x)`` call under ``torch.inference_mode()``
in eval mode (after one warm-up call).

Memory: "peak RSS delta" = the highest resident set size of this process seen during the
call minus the RSS just before it, sampled from /proc/self/statm every 0.5 ms by a thread
(Linux only; otherwise not reported). Why RSS: torch's CPU allocator has no peak counter
(``tracemalloc`` does not see it) and returns large blocks to the OS, so the RSS rise tracks
the activations and workspaces a forward pass needs. Limits: peaks shorter than the sampling
period can be missed, and memory the allocator keeps from earlier calls is not counted again,
so read it as a close lower bound of the extra memory a forward pass needs. The weights are
allocated before the measurement and not included (``param_mb`` reports them).
"""
import os
import threading
import time

import pytest
import torch

from reidkern.models.backbones import (
    deit_small_distilled_patch16,
    osnet_x0_25,
    resnet50,
    two_stream_resnet50,
    vit_base_patch16,
)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
RESULTS = []


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRSS:
    """Context manager: ``delta`` = peak RSS during the block − RSS before it, in bytes."""

    def __init__(self, interval: float = 5e-4):
        self.interval = interval
        self.delta = None

    def _watch(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss())
            time.sleep(self.interval)

    def __enter__(self):
        if not os.path.exists("/proc/self/statm"):
            return self
        self._base = self._peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        if hasattr(self, "_t"):
            self._stop.set()
            self._t.join()
            self._peak = max(self._peak, _rss())
            self.delta = self._peak - self._base
        return False


def _batch(config) -> int:
    if os.environ.get("REIDKERN_BENCH_SMOKE") == "1" or config.getoption("benchmark_disable", False):
        return 2
    return int(os.environ.get("REIDKERN_BENCH_BATCH", "64"))


CASES = {
    # name: (builder, (H, W), extra forward args)
    "resnet50_ls1": (lambda: resnet50(last_stride=1, out_stages=("layer4",)), (256, 128), ()),
    "two_stream_resnet50": (lambda: two_stream_resnet50(out_stages=("layer4",)), (288, 144), ("mixed",)),
    "vit_base_patch16_s16": (lambda: vit_base_patch16((256, 128), stride_size=16), (256, 128), ()),
    "deit_small_lgur": (lambda: deit_small_distilled_patch16((384, 128), depth=11, final_norm=False), (384, 128), ()),
    "osnet_x0_25_folded": (lambda: osnet_x0_25(folded=True).eval(), (256, 128), ()),
}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if RESULTS:
        lines = ["", "| backbone | batch | input | params (MB) | first call (s) | peak RSS delta (MB) |", "|---|---|---|---|---|---|"]
        for r in RESULTS:
            mem = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
            lines.append(f"| {r['name']} | {r['batch']} | {r['hw'][0]}x{r['hw'][1]} | {r['param_mb']:.0f} | {r['first_s']:.2f} | {mem} |")
        print("\n".join(lines))


@pytest.mark.parametrize("name", list(CASES))
def test_backbone_forward(benchmark, request, name):
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    builder, hw, extra = CASES[name]
    b = _batch(request.config)
    model = builder().eval()
    x = torch.randn(b, 3, *hw)
    args = (x,)
    if extra == ("mixed",):
        args = (x, torch.arange(b) % 2)
    with torch.inference_mode():
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            out = model(*args)
        first = time.perf_counter() - t0
        assert out is not None
        benchmark.pedantic(lambda: model(*args), rounds=1 if b <= 2 else 3, iterations=1, warmup_rounds=0)
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    peak_mb = None if mem.delta is None else mem.delta / 2**20
    benchmark.extra_info.update(batch=b, input=f"{hw[0]}x{hw[1]}", param_mb=round(param_mb, 1), peak_rss_delta_mb=peak_mb, device="cpu")
    RESULTS.append(dict(name=name, batch=b, hw=hw, param_mb=param_mb, first_s=first, peak_mb=peak_mb))

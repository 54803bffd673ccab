"""Shared pieces of the benchmark suite: smoke mode, peak-memory measurement, provider records.

Every ``bench_<op>.py`` parametrises over providers (eager reference, ``torch.compile`` of it, each
reidkern backend) and sizes, and records ``extra_info``: op, provider, size, peak memory. The report
script (benchmarks/report.py) turns the JSON into ratio tables and a chart.
"""
import os
import threading
import time

import torch

SMOKE = os.environ.get("REIDKERN_BENCH_SMOKE", "0") == "1"


def smoke() -> bool:
    """True in smoke mode (CI): benchmarks shrink their sizes so one call of each is quick."""
    return SMOKE


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn, device="cpu"):
    """Runs ``fn()`` once; returns ``(result, peak_bytes)``.

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation at the start (exact for torch
    allocations). CPU: growth of the process's resident set size over its value at the start,
    sampled every millisecond by a thread (captures torch and NumPy allocations; short spikes
    under 1 ms can be missed, so it is a lower bound).
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - base
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        done.set()
        t.join()
    peak[0] = max(peak[0], _rss_bytes())
    return out, peak[0] - base


def record(benchmark, op, provider, size, fn, device="cpu", **extra):
    """Benchmarks ``fn`` and stores op/provider/size/peak memory in ``benchmark.extra_info``.

    Peak memory comes from one separate call (see :func:`peak_memory`), so it is not perturbed by
    the timing loop. Returns the result of the timed calls.
    """
    _, peak = peak_memory(fn, device)
    benchmark.extra_info.update(op=op, provider=provider, size=size, device=str(device),
                                peak_bytes=int(peak), smoke=SMOKE, **extra)
    benchmark.group = f"{op} {size}"
    return benchmark(fn)

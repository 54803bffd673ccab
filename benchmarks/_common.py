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


def _mallopt(param, value):
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except OSError:  # not glibc
        return False


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


class _MeasurableMalloc:
    """While active, glibc serves every allocation above 64 KiB with its own mmap and returns it
    on free, so the resident set tracks live buffers (torch's and NumPy's alike).

    By default glibc raises its mmap threshold after large frees and then reuses heap pages that
    are already resident, so a sampled RSS peak reads ~0 for code that allocates and frees big
    temporaries. Timing must not run in that mode (every buffer would be faulted in afresh), so on
    exit the thresholds go to glibc's own steady state after large frees: mmap above 32 MiB,
    trim above 64 MiB.
    """

    def __enter__(self):
        self.ok = _mallopt(M_MMAP_THRESHOLD, 64 << 10) and _mallopt(M_TRIM_THRESHOLD, 64 << 10)
        return self

    def __exit__(self, *exc):
        _mallopt(M_MMAP_THRESHOLD, 32 << 20)
        _mallopt(M_TRIM_THRESHOLD, 64 << 20)
        return False


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
    sampled every millisecond by a thread, with glibc's mmap threshold at 64 KiB during the call so
    large buffers are mapped and unmapped as they live and die (:class:`_MeasurableMalloc`) (captures torch and NumPy allocations;
    spikes under 1 ms and small allocations can be missed, so it is a lower bound).
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - base
    with _MeasurableMalloc():
        return _cpu_peak(fn)


def _cpu_peak(fn):
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


def device_and_backend(provider):
    """``(device, backend)`` for a provider name: "reidkern-<backend>" runs that backend, anything
    else (eager, sdpa, compile) runs with backend None. CUDA and Triton providers skip without a
    GPU, except Triton in smoke mode, which runs in the interpreter on CPU as a correctness run."""
    import pytest

    import reidkern

    backend = provider.split("-", 1)[1] if provider.startswith("reidkern") else None
    if backend in ("cuda", "triton"):
        if not torch.cuda.is_available():
            if backend == "triton" and smoke():
                return "cpu", backend
            pytest.skip("needs a CUDA GPU")
        if backend == "cuda" and not reidkern.build_info()["with_cuda"]:
            pytest.skip("built without CUDA kernels")
        return "cuda", backend
    if backend == "cpp" and not reidkern.build_info()["native"]:
        pytest.skip("compiled library not built")
    return ("cuda" if torch.cuda.is_available() else "cpu"), backend


def record(benchmark, op, provider, size, fn, device="cpu", **extra):
    """Benchmarks ``fn`` and stores op/provider/size/peak memory in ``benchmark.extra_info``.

    Peak memory comes from one separate call (see :func:`peak_memory`), so it is not perturbed by
    the timing loop; torch.compile providers are called once before it, so that compilation is in
    neither the memory nor the timing. Returns the result of the timed calls.
    """
    if "compile" in provider:
        fn()
    _, peak = peak_memory(fn, device)
    benchmark.extra_info.update(op=op, provider=provider, size=size, device=str(device),
                                peak_bytes=int(peak), smoke=SMOKE, **extra)
    benchmark.group = f"{op} {size}"
    return benchmark(fn)

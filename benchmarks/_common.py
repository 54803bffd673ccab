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
SLOW_CALL_S = 10.0  # see record()


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
    """Runs ``fn()`` (once on CUDA, twice on the CPU); returns ``(result, peak_bytes)``.

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation at the start (exact for torch
    allocations). CPU: the larger of two lower bounds of the peak above the start:
    - the growth of the process's resident set size, sampled every millisecond by a thread, with
      glibc's mmap threshold at 64 KiB during the call so large buffers are mapped and unmapped as
      they live and die (:class:`_MeasurableMalloc`). It sees torch and NumPy allocations, but
      misses spikes under 1 ms and allocations served from pages an earlier call left resident
      (after a large run, e.g. a model's training step, a head's temporaries can read ~0);
    - the peak of the bytes live in torch's CPU allocator during a second call, from the
      allocation and free events of ``torch.profiler`` (``profile_memory=True``): exact for torch
      tensors, blind to NumPy (:func:`torch_cpu_peak`).
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - base
    with _MeasurableMalloc():
        out, rss = _cpu_peak(fn)
    return out, max(rss, torch_cpu_peak(fn)[1])


def torch_cpu_peak(fn):
    """Runs ``fn()`` under ``torch.profiler`` with memory profiling; returns ``(result,
    peak_bytes)``: the largest sum of the CPU allocations torch made (less those it freed) at any
    moment of the call. 0 where the profiler gives no memory events (a torch without kineto)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:
        return out, 0
    cpu = torch.autograd.DeviceType.CPU
    deltas = sorted((e.start_ns(), e.nbytes()) for e in events
                    if e.name() == "[memory]" and e.device_type() == cpu)
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return out, peak


def storage_ids(*tensors):
    """Ids of the storages of ``tensors`` (for :func:`saved_for_backward_bytes`'s ``skip``)."""
    return {t.untyped_storage()._cdata for t in tensors}


def saved_for_backward_bytes(forward, skip=frozenset()):
    """Exact bytes autograd keeps for the backward pass of ``forward()``: the distinct storages its
    saved tensors live in, less those in ``skip`` (:func:`storage_ids` of parameters and inputs,
    which exist anyway). The activation memory a training step holds between forward and backward;
    counted through ``saved_tensors_hooks``, so any device (``meta`` too) gives it."""
    seen = {}

    def pack(x):
        s = x.untyped_storage()
        if s._cdata not in skip:
            seen[s._cdata] = s.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        forward()
    return sum(seen.values())


def saved_memory_row(label, eager_bytes, reidkern_bytes):
    """One markdown row: eager vs reidkern saved-for-backward MiB and the ratio."""
    return (f"| {label} | eager {eager_bytes / 2**20:,.1f} MiB | reidkern {reidkern_bytes / 2**20:,.1f} MiB "
            f"| {eager_bytes / reidkern_bytes:.2f}x less |")


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


def run_device() -> str:
    """The device this run measures: the GPU when one is present, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def reidkern_providers():
    """The reidkern providers this run is meant to measure on :func:`run_device`.

    CPU: the C++ kernels ("reidkern-cpp"); in smoke mode also Triton in the interpreter (a
    correctness run, not a speed measure), when triton is installed. GPU: the CUDA kernels and
    the compiled Triton kernels. A listed provider that cannot run fails the benchmark
    (:func:`device_and_backend`); it is never skipped.
    """
    from reidkern.ops._backend import triton_available

    if run_device() == "cuda":
        return ["reidkern-cuda", "reidkern-triton"]
    return ["reidkern-cpp"] + (["reidkern-triton"] if smoke() and triton_available() else [])


def device_and_backend(provider):
    """``(device, backend)`` for a provider name: "reidkern-<backend>" runs that backend, anything
    else (eager, sdpa, compile) runs with backend None on :func:`run_device`.

    A reidkern provider of this run (:func:`reidkern_providers`) that cannot run -- compiled
    library missing, built without CUDA kernels, triton not installed -- fails the benchmark with
    the reason. A provider for another device (the C++ kernels on a GPU run, CUDA/Triton on a CPU
    run) is skipped: that run measures it.
    """
    import pytest

    import reidkern
    from reidkern.ops._backend import triton_available

    device = run_device()
    if not provider.startswith("reidkern"):
        return device, None
    backend = provider.split("-", 1)[1]
    if provider not in reidkern_providers():
        pytest.skip(f"{provider} is measured on {'CPU' if backend == 'cpp' else 'GPU'} runs, "
                    f"this run measures {device}")
    info = reidkern.build_info()
    if backend in ("cpp", "cuda") and not info["native"]:
        pytest.fail(f"{provider}: reidkern's compiled library is not loaded ({info['native_error']}); "
                    "build it (pip install .) -- the benchmark suite measures the compiled kernels")
    if backend == "cuda" and not info["with_cuda"]:
        pytest.fail(f"{provider}: reidkern was built without CUDA kernels on a machine with a GPU "
                    "(rebuild with nvcc on PATH, REIDKERN_WITH_CUDA=1)")
    if backend == "triton" and not triton_available():
        pytest.fail(f"{provider}: the triton package is not installed")
    return device, backend


def record(benchmark, op, provider, size, fn, device="cpu", **extra):
    """Benchmarks ``fn`` and stores op/provider/size/peak memory in ``benchmark.extra_info``.

    One warm-up call (torch.compile providers: two) comes first, so that compilation and
    first-call costs are in neither the timing nor the memory; peak memory comes from separate
    calls after the timing (see :func:`peak_memory`), so the two do not perturb each other. A
    warm-up call that took over :data:`SLOW_CALL_S` is timed
    over one round without pytest-benchmark's calibration call (which would be one more full call
    and change nothing: such a call is far above the timer's resolution). Returns the result of
    the timed calls.
    """
    if "compile" in provider:
        fn()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    benchmark.group = f"{op} {size}"
    if seconds > SLOW_CALL_S:
        out = benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    else:
        out = benchmark(fn)
    _, peak = peak_memory(fn, device)
    benchmark.extra_info.update(op=op, provider=provider, size=size, device=str(device),
                                peak_bytes=int(peak), smoke=SMOKE, **extra)
    return out


def reid_features(num_q, num_g, dim, device, seed=0):
    """Query and gallery features shaped like ReID embeddings: ids with ~12 samples each, noise
    around each id's centre, L2-normalised. Returns ``(qf [num_q, dim], gf [num_g, dim])``."""
    g = torch.Generator().manual_seed(seed)
    n = num_q + num_g
    num_ids = max(2, n // 12)
    centers = torch.randn(num_ids, dim, generator=g)
    ids = torch.randint(0, num_ids, (n,), generator=g)
    x = torch.nn.functional.normalize(centers[ids] + 0.6 * torch.randn(n, dim, generator=g), dim=1)
    x = x.to(device)
    return x[:num_q].contiguous(), x[num_q:].contiguous()


def mirrored_maps(stage, records, cache=None, dtype=torch.float32, height=256, width=128, batch_size=64):
    """Feature maps of each record's test-time image and of its mirror, for studies that train or
    score only what comes after a frozen ``stage``.

    Args:
        stage: ``images [B, 3, height, width] -> maps [B, ...]`` (run under ``torch.no_grad``).
        records: reidkern Records (their images go through ``build_transforms(train=False)``).
        cache: a ``.pt`` file: loaded when it exists, else written (atomically) after computing.
        dtype: the stored maps' dtype (float16 halves the memory of large studies).

    Returns:
        ``dtype`` tensor [2, N, ...]: ``[0]`` the images' maps, ``[1]`` their mirrors'.
    """
    from reidkern.atomic import atomic_path
    from reidkern.data import ImageDataset, build_transforms
    from reidkern.engine.loader import eval_loader

    if cache and os.path.exists(cache):
        return torch.load(cache)
    loader = eval_loader(ImageDataset(records, build_transforms(height, width, train=False)), batch_size, 0)
    with torch.no_grad():
        maps = [torch.stack([stage(b["img"]).to(dtype), stage(b["img"].flip(3)).to(dtype)]) for b in loader]
    out = torch.cat(maps, dim=1)
    if cache:
        with atomic_path(cache) as tmp:
            torch.save(out, tmp)
    return out

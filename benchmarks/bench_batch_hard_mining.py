"""Batch-hard triplet loss, forward + backward: fast-reid-style eager masked max/min, torchreid's
per-anchor loop, torch.compile of the eager one, and reidkern.nn.TripletLoss (fused mining op).

Sizes: B in {64, 128, 256, 512} (P x K sampling, K = 4 images per identity), D in {256, 768, 2048};
smoke mode: one tiny size. Run:
    PYTHONPATH=. python -m pytest benchmarks/bench_batch_hard_mining.py --benchmark-json=/tmp/triplet.json
or, interleaving the providers round by round (fairer on a loaded machine), a markdown table:
    cd benchmarks && PYTHONPATH=.. python bench_batch_hard_mining.py [256x2048 ...]
"""
import pytest
import torch

from _common import device_and_backend, record, reidkern_providers, run_device, smoke
from reidkern.nn import TripletLoss
from reidkern.ops.reference.batch_hard_mining import triplet_loss_fastreid, triplet_loss_torchreid

DEVICE = run_device()
SIZES = [(16, 32)] if smoke() else [(b, d) for b in (64, 128, 256, 512) for d in (256, 768, 2048)]
PROVIDERS = ["eager", "torchreid", "compile"] + reidkern_providers()
REPRESENTATIVE = {(256, 2048)}  # `reidkern bench` without --full
_compiled = {}


def make_inputs(b, d):
    g = torch.Generator().manual_seed(b * 10_000 + d)
    x = torch.randn(b, d, generator=g).to(DEVICE).requires_grad_()
    labels = torch.arange(b // 4).repeat_interleave(4).to(DEVICE)  # P x K, K = 4
    return x, labels


def loss_fn(provider):
    if provider == "eager":
        return triplet_loss_fastreid
    if provider == "torchreid":
        return triplet_loss_torchreid
    if provider == "compile":
        if "fn" not in _compiled:
            _compiled["fn"] = torch.compile(triplet_loss_fastreid, dynamic=False)
        return _compiled["fn"]
    _, backend = device_and_backend(provider)
    return TripletLoss(0.3, backend=backend)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"B{s[0]}-D{s[1]}")
def test_triplet_forward_backward(benchmark, provider, size):
    b, d = size
    x, labels = make_inputs(b, d)
    fn = loss_fn(provider)

    def step():
        x.grad = None
        loss = fn(x, labels)
        loss.backward()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return loss

    step()  # warm-up (compilation for torch.compile)
    loss = record(benchmark, "triplet", provider, f"B={b} D={d}", step, DEVICE)
    expected = triplet_loss_fastreid(x.detach().double(), labels)
    torch.testing.assert_close(loss.detach().double(), expected, rtol=1e-4, atol=1e-5)


def interleaved(sizes, providers=("eager", "compile", "torchreid", "reidkern-cpp"), rounds=30):
    """Times the providers in interleaved rounds (robust on a shared, loaded machine): for every
    round each provider runs once; reports min and median ms and the smallest peak-memory
    reading (see _common.peak_memory) as a markdown table."""
    import statistics
    import time

    from _common import peak_memory
    print("| B | D | provider | min ms | median ms | min/min vs eager | median vs eager | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for b, d in sizes:
        x, labels = make_inputs(b, d)
        steps = {}
        for p in providers:
            fn = loss_fn(p)

            def step(fn=fn):
                x.grad = None
                fn(x, labels).backward()
            step()
            steps[p] = step
        times = {p: [] for p in providers}
        n = rounds
        for r in range(n):
            for p in providers:
                if p == "torchreid" and r >= max(3, n // 5):
                    continue  # the loop is slow; a few rounds suffice
                t = time.perf_counter()
                steps[p]()
                times[p].append(time.perf_counter() - t)
        peaks = {p: min(peak_memory(steps[p])[1] for _ in range(3)) for p in providers}
        e_min, e_med = min(times["eager"]), statistics.median(times["eager"])
        for p in providers:
            t_min, t_med = min(times[p]), statistics.median(times[p])
            print(f"| {b} | {d} | {p} | {t_min * 1e3:.2f} | {t_med * 1e3:.2f} | {e_min / t_min:.2f}x | "
                  f"{e_med / t_med:.2f}x | {peaks[p] / 2**20:.1f} |", flush=True)


if __name__ == "__main__":
    import sys
    torch.manual_seed(0)
    grid = [(b, d) for b in (64, 128, 256, 512) for d in (256, 768, 2048)]
    if len(sys.argv) > 1:
        grid = [tuple(int(v) for v in s.split("x")) for s in sys.argv[1:]]
    interleaved(grid)

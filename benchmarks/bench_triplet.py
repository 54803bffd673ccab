"""Batch-hard triplet loss, forward + backward: fast-reid-style eager masked max/min, torchreid's
per-anchor loop, torch.compile of the eager one, and reidkern.nn.TripletLoss (fused mining op).

Sizes: B in {64, 128, 256, 512} (P x K sampling, K = 4 images per identity), D in {256, 768, 2048};
smoke mode: one tiny size. Run:
    PYTHONPATH=. python -m pytest benchmarks/bench_triplet.py --benchmark-json=/tmp/triplet.json
"""
import pytest
import torch

from _common import record, smoke
from reidkern.nn import TripletLoss
from reidkern.ops._backend import triton_available
from reidkern.ops.reference.batch_hard_mining import triplet_loss_fastreid, triplet_loss_torchreid
from reidkern.testing import backends_for

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [(16, 32)] if smoke() else [(b, d) for b in (64, 128, 256, 512) for d in (256, 768, 2048)]
PROVIDERS = ["eager", "torchreid", "compile"] + [f"reidkern-{b}" for b in backends_for(DEVICE)
                                                 if b != "reference"]
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
    backend = provider.split("-", 1)[1]
    if backend == "triton" and DEVICE == "cpu" and not smoke():
        pytest.skip("Triton on CPU runs in the interpreter: not a speed measure")
    if backend == "triton" and not triton_available():
        pytest.skip("triton not installed")
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

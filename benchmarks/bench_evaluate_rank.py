"""CMC/mAP/mINP evaluation: eager (torchreid's argsort + per-query loop) vs reidkern backends.

Sizes: Market-1501 (3,368 queries x 15,913 gallery, from a distance matrix) and MSMT17
(11,659 x 82,161, 512-d features through evaluate_features, tiled: the dense eager path would need
~16 GB for its argsort and match arrays, so only reidkern runs there).
"""
import pytest
import torch

from reidkern.metrics import evaluate_features, evaluate_rank
from reidkern.metrics.distance import ranking_distance
from reidkern.ops.reference.evaluate_rank import evaluate_rank_reference

from _common import device_and_backend, record, reidkern_providers, smoke

SIZES = {"smoke": (64, 500)} if smoke() else {"market1501": (3368, 15913), "msmt17": (11659, 82161)}
PROVIDERS = ["eager"] + reidkern_providers()
REPRESENTATIVE = {"market1501"}  # `reidkern bench` without --full


def make_features(num_q, num_g, dim=512, seed=0):
    """Identity-clustered features: ~num_g/20 ids, 6 cameras, queries drawn from gallery ids."""
    g = torch.Generator().manual_seed(seed)
    num_ids = max(2, num_g // 20)
    centers = torch.randn(num_ids, dim, generator=g)
    g_pids = torch.randint(0, num_ids, (num_g,), generator=g)
    q_pids = g_pids[torch.randint(0, num_g, (num_q,), generator=g)]
    gf = centers[g_pids] + 1.5 * torch.randn(num_g, dim, generator=g)
    qf = centers[q_pids] + 1.5 * torch.randn(num_q, dim, generator=g)
    q_camids = torch.randint(0, 6, (num_q,), generator=g)
    g_camids = torch.randint(0, 6, (num_g,), generator=g)
    return qf, gf, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(SIZES))
def test_evaluate(benchmark, provider, size):
    num_q, num_g = SIZES[size]
    device, backend = device_and_backend(provider)
    qf, gf, qp, gp, qc, gc = (t.to(device) for t in make_features(num_q, num_g))
    label = f"{num_q}x{num_g}"
    if size == "msmt17":
        if provider == "eager":
            pytest.skip("dense eager evaluation does not fit at MSMT17 size")
        fn = lambda: evaluate_features(qf, gf, qp, gp, qc, gc, backend=backend, progress=False)  # noqa: E731
        result = record(benchmark, "evaluate_features", provider, label, fn, device)
        assert result.num_valid_queries > 0
        return
    distmat = ranking_distance(qf, gf)  # squared Euclidean, as torchreid ranks
    if provider == "eager":
        fn = lambda: evaluate_rank_reference(distmat, qp, gp, qc, gc)  # noqa: E731
    else:
        fn = lambda: evaluate_rank(distmat, qp, gp, qc, gc, backend=backend).first_hit  # noqa: E731
    out = record(benchmark, "evaluate_rank", provider, label, fn, device)
    first_hit = out[0] if provider == "eager" else out
    # Identical results: same first hits as the float64 reference.
    ref = evaluate_rank_reference(distmat, qp, gp, qc, gc)[0] if provider != "eager" else first_hit
    assert torch.equal(first_hit.cpu(), ref)

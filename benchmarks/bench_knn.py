"""knn (k nearest neighbours by squared Euclidean distance, and each row's maximum distance): the
eager form of the published re-ranking code (the full float32 N x N distance matrix from
``|x|^2 + |y|^2 - 2 x y^T``, then topk and max) vs the reidkern backends (tiled, O(N k) memory,
exact float64 order).

Size: Market-1501's query + gallery (19,281 samples) against themselves at 512-d and 2048-d,
k = k1 + 2 = 22 as k-reciprocal re-ranking asks; clustered, L2-normalised features
(benchmarks/_common.py::reid_features). Each reidkern record stores how many of its
neighbour lists differ from the eager one (``rows_differing_vs_eager``: float32 rounding in the
eager matrix reorders near ties; reidkern's order is the float64 one).
"""
import pytest
import torch

from reidkern.ops import knn

from _common import device_and_backend, record, reid_features, reidkern_providers, smoke

# name: (N, D, k)
SIZES = {"smoke": (97, 16, 5)} if smoke() else {"market-512": (19281, 512, 22), "market-2048": (19281, 2048, 22)}
PROVIDERS = ["eager"] + reidkern_providers()
REPRESENTATIVE = {"market-512"}  # `reidkern bench` without --full
_EAGER = {}


def knn_eager(x, k):
    """The published code's form: dense float32 squared distances, topk, row max."""
    sq = (x * x).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min_(0)
    vals, idx = torch.topk(d, k, dim=1, largest=False)
    return vals, idx, d.max(dim=1).values


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(SIZES))
def test_knn(benchmark, provider, size):
    n, dim, k = SIZES[size]
    device, backend = device_and_backend(provider)
    qf, gf = reid_features(n // 6, n - n // 6, dim, device)
    x = torch.cat([qf, gf])
    if provider == "eager":
        fn = lambda: knn_eager(x, k)  # noqa: E731
    else:
        fn = lambda: knn(x, x, k, backend=backend)  # noqa: E731
    dist, idx, _ = record(benchmark, "knn", provider, f"{size} {n}x{n}x{dim} k={k}", fn, device)
    if provider == "eager":
        _EAGER[size] = idx.cpu()
        return
    assert idx.shape == (n, k) and dist.dtype == torch.float64
    assert bool((idx[:, 0] == torch.arange(n, device=idx.device)).float().mean() > 0.99)  # self first
    if size in _EAGER:
        benchmark.extra_info["rows_differing_vs_eager"] = int((idx.cpu() != _EAGER[size]).any(1).sum())

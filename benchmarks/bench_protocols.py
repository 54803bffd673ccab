"""Protocol overhead: each task's protocol vs reidkern's bare evaluation kernel on the same input.

Market-1501 size (3,368 queries × 15,913 gallery): ``evaluate_image_reid_distmat`` (id checks,
camera-free mapping) vs ``evaluate_rank`` on the same distance matrix, and ``evaluate_image_reid``
vs ``evaluate_features`` from 512-d features. SYSU-MM01 size (3,803 infrared queries × 301
single-shot gallery, one trial): the SYSU protocol (camera rule, distinct-identity CMC) vs
``evaluate_rank``. Target: protocol within 1.2× of the kernel alone.
"""
import pytest
import torch

from reidkern.metrics import evaluate_features, evaluate_rank, pairwise_distance
from reidkern.metrics.protocols import (evaluate_image_reid, evaluate_image_reid_distmat,
                                        evaluate_sysu_mm01_distmat)

from _common import record, smoke
from bench_evaluate_rank import make_features

MARKET = (64, 500) if smoke() else (3368, 15913)
SYSU = (64, 40) if smoke() else (3803, 301)
REPRESENTATIVE = {"market1501", "sysu-single-shot"}  # `reidkern bench` without --full


@pytest.fixture(scope="module")
def market():
    qf, gf, qp, gp, qc, gc = make_features(*MARKET)
    return qf, gf, qp, gp, qc, gc, pairwise_distance(qf, gf)


@pytest.mark.parametrize("size", ["market1501"])
@pytest.mark.parametrize("provider", ["kernel", "protocol"])
def test_image_reid_distmat(benchmark, provider, size, market):
    qf, gf, qp, gp, qc, gc, distmat = market
    if provider == "kernel":
        fn = lambda: evaluate_rank(distmat, qp, gp, qc, gc)  # noqa: E731
    else:
        fn = lambda: evaluate_image_reid_distmat(distmat, qp, gp, qc, gc)  # noqa: E731
    res = record(benchmark, "image_reid_protocol(distmat)", provider, f"{MARKET[0]}x{MARKET[1]}", fn)
    assert res.num_valid_queries > 0


@pytest.mark.parametrize("size", ["market1501-512d"])
@pytest.mark.parametrize("provider", ["kernel", "protocol"])
def test_image_reid_features(benchmark, provider, size, market):
    qf, gf, qp, gp, qc, gc, _ = market
    if provider == "kernel":
        fn = lambda: evaluate_features(qf, gf, qp, gp, qc, gc, progress=False)  # noqa: E731
    else:
        fn = lambda: evaluate_image_reid(qf, gf, qp, gp, qc, gc, progress=False)  # noqa: E731
    res = record(benchmark, "image_reid_protocol(features)", provider, f"{MARKET[0]}x{MARKET[1]}", fn)
    assert res.num_valid_queries > 0


@pytest.mark.parametrize("size", ["sysu-single-shot"])
@pytest.mark.parametrize("provider", ["kernel", "protocol"])
def test_sysu(benchmark, provider, size):
    num_q, num_g = SYSU
    g = torch.Generator().manual_seed(0)
    num_ids = max(2, num_g // 4)
    g_pids = torch.arange(num_g) % num_ids
    q_pids = g_pids[torch.randint(0, num_g, (num_q,), generator=g)]
    g_camids = torch.tensor([0, 1, 3, 4])[torch.arange(num_g) // num_ids % 4]
    q_camids = torch.tensor([2, 5])[torch.randint(0, 2, (num_q,), generator=g)]
    distmat = torch.rand(num_q, num_g, generator=g)
    if provider == "kernel":
        fn = lambda: evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20)  # noqa: E731
    else:
        fn = lambda: evaluate_sysu_mm01_distmat(distmat, q_pids, g_pids, q_camids, g_camids)  # noqa: E731
    res = record(benchmark, "sysu_mm01_protocol", provider, f"{num_q}x{num_g}", fn)
    assert res.num_valid_queries > 0

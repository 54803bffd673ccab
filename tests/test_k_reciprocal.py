"""k-reciprocal re-ranking and Jaccard distance against the float64 dense reference."""
import os
import socket

import numpy as np
import pytest
import torch

import reidkern
from reidkern.metrics import evaluate_rank
from reidkern.ops.reference.k_reciprocal import (jaccard_distance_reference,
                                                  k_reciprocal_from_distances_reference,
                                                  k_reciprocal_reference)
from reidkern.rerank import jaccard_distance, k_reciprocal, k_reciprocal_from_distances
from reidkern.testing import assert_close, device_backend_cases, opcheck

CASES = device_backend_cases()
NATIVE = reidkern.build_info()["native"]


def clustered(n, dim, num_ids, seed, dtype=torch.float32, spread=0.5):
    """Features of ``num_ids`` identities with several samples each, and their ids."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_ids, dim, generator=g, dtype=torch.float64)
    ids = torch.randint(0, num_ids, (n,), generator=g)
    x = centers[ids] + spread * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return x.to(dtype), ids


def split(x, num_q):
    return x[:num_q], x[num_q:]


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("case", [
    # (Q, G, D, ids, k1, k2, lambda, dtype)
    (17, 96, 16, 12, 20, 6, 0.3, torch.float32),    # the paper's parameters
    (9, 54, 8, 7, 7, 3, 0.5, torch.float64),
    (5, 40, 5, 6, 21, 1, 0.0, torch.float32),       # odd k1 (round half to even), no expansion
    (13, 31, 12, 5, 3, 4, 1.0, torch.float64),      # k2 = k1 + 1, lambda = 1
    (3, 11, 4, 3, 1, 2, 0.3, torch.float32),        # k1 = 1
])
def test_matches_reference(device, backend, case):
    num_q, num_g, dim, ids, k1, k2, lam, dtype = case
    if backend == "triton" and device == "cpu" and num_q + num_g > 60:
        pytest.skip("interpreted Triton: keep N small")
    x, _ = clustered(num_q + num_g, dim, ids, seed=num_q * 100 + num_g, dtype=dtype)
    qf, gf = split(x, num_q)
    out = k_reciprocal(qf.to(device), gf.to(device), k1, k2, lam, backend=backend)
    assert out.dtype == torch.float32 and out.shape == (num_q, num_g)
    assert_close(out, k_reciprocal_reference(qf, gf, k1, k2, lam), dtype=torch.float64,
                 rtol=0, atol=1e-5)


@pytest.mark.parametrize("device,backend", CASES)
def test_ties_and_duplicates(device, backend):
    # Integer features from a tiny range: exactly equal distances everywhere and duplicate samples
    # (several at distance 0 from each other); ties must be ordered by index as a stable sort does.
    g = torch.Generator().manual_seed(3)
    n = 48 if backend == "triton" and device == "cpu" else 90
    x = torch.randint(0, 3, (n, 5), generator=g).float()
    qf, gf = split(x, 11)
    for k1, k2 in ((6, 3), (20, 6)):
        out = k_reciprocal(qf.to(device), gf.to(device), k1, k2, 0.3, backend=backend)
        assert_close(out, k_reciprocal_reference(qf, gf, k1, k2, 0.3), dtype=torch.float64,
                     rtol=0, atol=1e-5)


def test_noncontiguous_and_mixed_dtypes():
    x, _ = clustered(70, 20, 8, seed=5, dtype=torch.float64)
    qf = x[:13, ::2]  # non-contiguous
    gf = x[13:, ::2].float()
    assert not qf.is_contiguous()
    out = k_reciprocal(qf, gf, 10, 4, 0.3)
    assert_close(out, k_reciprocal_reference(qf, gf.double(), 10, 4, 0.3), dtype=torch.float64,
                 rtol=0, atol=1e-5)


@pytest.mark.parametrize("square", [True, False])
def test_from_distances_matches_reference(square):
    x, _ = clustered(88, 10, 9, seed=6, dtype=torch.float64)
    qf, gf = split(x, 19)
    q_g, q_q, g_g = torch.cdist(qf, gf), torch.cdist(qf, qf), torch.cdist(gf, gf)
    out = k_reciprocal_from_distances(q_g, q_q, g_g, 20, 6, 0.3, square=square)
    ref = k_reciprocal_from_distances_reference(q_g, q_q, g_g, 20, 6, 0.3, square=square)
    assert_close(out, ref, dtype=torch.float64, rtol=0, atol=1e-5)
    # Asymmetric input (as the published code allows): column maxima, then transpose.
    q_q2 = q_q + 0.1 * torch.rand(q_q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = k_reciprocal_from_distances(q_g.numpy(), q_q2.numpy(), g_g.numpy(), 7, 2, 0.4, square=square)
    ref = k_reciprocal_from_distances_reference(q_g, q_q2, g_g, 7, 2, 0.4, square=square)
    assert_close(out, ref, dtype=torch.float64, rtol=0, atol=1e-5)


def test_features_and_distances_forms_agree():
    x, _ = clustered(60, 8, 6, seed=8, dtype=torch.float64)
    qf, gf = split(x, 10)
    # sqrt of squared distances, squared again inside: the same original distance.
    q_g, q_q, g_g = torch.cdist(qf, gf), torch.cdist(qf, qf), torch.cdist(gf, gf)
    assert_close(k_reciprocal_from_distances(q_g, q_q, g_g, 9, 3, 0.3), k_reciprocal(qf, gf, 9, 3, 0.3),
                 dtype=torch.float64, rtol=0, atol=1e-5)


def dense_from_sparse(mat):
    dense = np.ones(mat.shape)
    coo = mat.tocoo()
    dense[coo.row, coo.col] = coo.data
    return dense


@pytest.mark.parametrize("k1,k2", [(20, 6), (5, 1), (8, 9)])
def test_jaccard_distance_matches_reference(k1, k2):
    import scipy.sparse as sp
    x, _ = clustered(110, 12, 10, seed=k1 + k2)
    jac = jaccard_distance(x, k1, k2, tile_rows=37)
    assert sp.isspmatrix_csr(jac) and jac.shape == (110, 110)
    assert (jac.data >= 0).all() and (jac.data < 1).all()
    ref = np.maximum(jaccard_distance_reference(x, k1, k2).numpy(), 0.0)
    np.testing.assert_allclose(dense_from_sparse(jac), ref, rtol=0, atol=1e-6)
    assert jac.nnz == int((ref < 1).sum())  # exactly the pairs closer than 1
    assert np.allclose(jac.diagonal(), 0.0)


def test_dbscan_accepts_sparse_jaccard_and_clusters_toy_set():
    from sklearn.cluster import DBSCAN
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    ids = torch.arange(4).repeat_interleave(15)
    x = centers[ids] + 0.3 * torch.randn(60, 2, generator=g)
    jac = jaccard_distance(x, k1=10, k2=6)
    labels = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(jac)
    assert (labels >= 0).all()
    # One cluster per identity, identical to DBSCAN on the dense matrix.
    assert len(set(labels.tolist())) == 4
    for i in range(4):
        assert len(set(labels[ids.numpy() == i].tolist())) == 1
    dense = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(dense_from_sparse(jac))
    assert (labels == dense).all()


def test_evaluate_rank_on_result_and_rerank_helps():
    x, ids = clustered(150, 16, 25, seed=9, spread=0.9)
    cams = torch.arange(150) % 3
    num_q = 30
    qf, gf = split(x, num_q)
    out = k_reciprocal(qf, gf)
    r = evaluate_rank(out, ids[:num_q], ids[num_q:], cams[:num_q], cams[num_q:], max_rank=10)
    assert 0.0 < r.mAP <= 1.0 and r.num_valid_queries > 0


def test_progress_bar(capsys):
    x, _ = clustered(50, 4, 5, seed=10)
    qf, gf = split(x, 10)
    out = k_reciprocal(qf, gf, 5, 2, 0.3, progress=True, tile_rows=3)
    assert "re-ranking" in capsys.readouterr().err
    assert_close(out, k_reciprocal(qf, gf, 5, 2, 0.3, progress=False), dtype=torch.float64,
                 rtol=0, atol=1e-7)


# ---- distributed ---------------------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, qf, gf_shards, params, result_dir):
    import torch.distributed as dist
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = k_reciprocal(qf, gf_shards[rank], *params, distributed=True)
        torch.save(out, os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not NATIVE or not torch.distributed.is_available(),
                    reason="needs the compiled library and torch.distributed")
def test_distributed_gloo_two_ranks_equals_single_process(tmp_path):
    import torch.multiprocessing as mp
    x, _ = clustered(97, 12, 9, seed=11)
    qf, gf = split(x, 14)
    shards = [gf[:29], gf[29:]]  # uneven shards
    params = (20, 6, 0.3)
    ctx = mp.start_processes(_worker, args=(2, _free_port(), qf, shards, params, str(tmp_path)),
                             nprocs=2, join=False, start_method="spawn")
    for p in ctx.processes:
        p.join(timeout=120)
    alive = [p for p in ctx.processes if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "distributed workers did not finish in time"
    assert all(p.exitcode == 0 for p in ctx.processes)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert parts[0].shape == (14, 29) and parts[1].shape == (14, 54)
    single = k_reciprocal(qf, gf, *params)
    assert_close(torch.cat(parts, 1), single, dtype=torch.float64, rtol=0, atol=1e-6)
    assert_close(single, k_reciprocal_reference(qf, gf, *params), dtype=torch.float64, rtol=0,
                 atol=1e-5)


# ---- ops ----------------------------------------------------------------------------------------

@pytest.mark.skipif(not NATIVE, reason="compiled library not built")
def test_opcheck_sparse_ops():
    from reidkern.ops.k_reciprocal import k_reciprocal_expand, sparse_rows_mean
    x, _ = clustered(30, 4, 4, seed=12, dtype=torch.float64)
    d = torch.cdist(x, x)
    ranks = torch.argsort(d, dim=1, stable=True)[:, :8].contiguous()
    opcheck(torch.ops.reidkern.k_reciprocal_expand.default, (ranks, 7),
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    crow, cols = k_reciprocal_expand(ranks, 7)
    vals = torch.rand(len(cols), dtype=torch.float64)
    opcheck(torch.ops.reidkern.sparse_rows_mean.default, (crow, cols, vals, ranks, 3),
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    c2, l2, v2 = sparse_rows_mean(crow, cols, vals, ranks, 3)
    t_ptr = torch.zeros(31, dtype=torch.int64)
    t_ptr[1:] = torch.cumsum(torch.bincount(l2, minlength=30), 0)
    order = torch.argsort(l2, stable=True)
    t_rows = torch.repeat_interleave(torch.arange(30), c2.diff())[order].contiguous()
    opcheck(torch.ops.reidkern.jaccard_sum_min.default,
            (c2, l2, v2, t_ptr, t_rows, v2[order].contiguous(), 30),
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    qf, gf = torch.randn(4, 8), torch.randn(30, 8)
    with pytest.raises(ValueError, match="feature dimension"):
        k_reciprocal(qf, torch.randn(30, 7))
    with pytest.raises(ValueError, match="qf contains NaN"):
        k_reciprocal(qf.masked_fill(qf > 1, float("nan")), gf)
    with pytest.raises(ValueError, match="gf contains NaN or inf"):
        k_reciprocal(qf, gf.masked_fill(gf > 1, float("inf")))
    with pytest.raises(ValueError, match="k1"):
        k_reciprocal(qf, gf, k1=0)
    with pytest.raises(ValueError, match="k2"):
        k_reciprocal(qf, gf, k1=5, k2=0)
    with pytest.raises(ValueError, match="k2"):
        k_reciprocal(qf, gf, k1=5, k2=7)
    with pytest.raises(ValueError, match="k1 \\+ 1"):
        k_reciprocal(qf, gf[:10], k1=20)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal(qf, gf, lambda_value=1.5)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal(qf, gf, lambda_value=-0.1)
    with pytest.raises(TypeError, match="k1"):
        k_reciprocal(qf, gf, k1=2.5)
    with pytest.raises(ValueError, match="qf must be 2-D"):
        k_reciprocal(torch.randn(8), gf)
    with pytest.raises(ValueError, match="identical"):
        k_reciprocal(torch.ones(4, 3), torch.ones(30, 3))
    with pytest.raises(ValueError, match="distributed"):
        k_reciprocal(qf, gf, distributed=True)
    with pytest.raises(ValueError, match="q_q_dist"):
        k_reciprocal_from_distances(torch.rand(4, 30), torch.rand(3, 3), torch.rand(30, 30))
    with pytest.raises(ValueError, match="g_g_dist"):
        k_reciprocal_from_distances(torch.rand(4, 30), torch.rand(4, 4), torch.rand(29, 30))
    with pytest.raises(ValueError, match="features contains NaN"):
        jaccard_distance(torch.full((30, 3), float("nan")))
    with pytest.raises(ValueError, match="k2"):
        jaccard_distance(torch.randn(30, 3), k1=4, k2=6)
    with pytest.raises(ValueError, match="at least"):
        jaccard_distance(torch.randn(10, 3), k1=20)


@pytest.mark.skipif(not NATIVE, reason="compiled library not built")
def test_opcheck_fused_ops():
    from reidkern.ops.k_reciprocal import pair_sq_dist
    x, _ = clustered(12, 5, 3, seed=13, dtype=torch.float64)
    rows, cols = torch.randint(0, 12, (30,)), torch.randint(0, 12, (30,))
    opcheck(torch.ops.reidkern.pair_sq_dist.default, (x, rows, cols))
    assert_close(pair_sq_dist(x, rows, cols), ((x[rows] - x[cols]) ** 2).sum(1), rtol=1e-13, atol=1e-13)
    # V: 3 rows over 4 columns; targets: 2 rows; s[i, j] = sum_l min(V[i, l], T[j, l]).
    V = torch.tensor([[0.5, 0.5, 0, 0], [0, 0.2, 0.8, 0], [0, 0, 0, 1.0]], dtype=torch.float64)
    T = torch.tensor([[0.1, 0.9, 0, 0], [0, 0, 0.3, 0.7]], dtype=torch.float64)
    Vs, Ts = V.to_sparse_csr(), T.t().contiguous().to_sparse_csr()
    args = tuple(t.clone() for t in (Vs.crow_indices(), Vs.col_indices(), Vs.values(),
                                      Ts.crow_indices(), Ts.col_indices(), Ts.values()))
    orig = torch.rand(3, 2, dtype=torch.float64)
    opcheck(torch.ops.reidkern.jaccard_rerank.default, (*args, orig, 0.3))
    s = torch.minimum(V[:, None, :], T[None, :, :]).sum(-1)
    expected = 0.7 * (1 - s / (2 - s)) + 0.3 * orig
    assert_close(torch.ops.reidkern.jaccard_rerank(*args, orig, 0.3), expected, dtype=torch.float32)
    crow, cols, vals = torch.ops.reidkern.jaccard_sum_min(*args, 2)
    dense = torch.zeros(3, 2, dtype=torch.float64)
    dense[torch.repeat_interleave(torch.arange(3), crow.diff()), cols] = vals
    assert_close(dense, s)
    assert (vals > 0).all()

"""Regression tests: hostile inputs that once gave wrong results or unclear errors. Each test is the
reproducer of one defect; the policies they pin are in docs/numeric_contract.md."""
import warnings

import numpy as np
import pytest
import torch

from reidkern.metrics import evaluate_features, evaluate_rank
from reidkern.nn import (AMSoftmaxLoss, CrossModalRankingLoss, DictionaryCrossAttention,
                         PrototypeUnification, TemplateCrossAttention, TopKTokenAggregation,
                         TripletLoss)
from reidkern.ops.batch_hard_mining import batch_hard_mining
from reidkern.ops.knn import knn
from reidkern.ops.reference.k_reciprocal import k_reciprocal_reference, squared_euclidean_exact
from reidkern.ops.reference.knn import knn_reference
from reidkern.ops.template_attention import template_attention
from reidkern.ops.topk_token_aggregate import topk_token_aggregate
from reidkern.rerank import jaccard_distance, k_reciprocal, k_reciprocal_from_distances


def _feats(n=12, d=5, seed=0, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _ref_rerank(qf, gf, k1, k2, lam=0.3):
    X = torch.cat([qf, gf]).double()
    return torch.as_tensor(np.asarray(k_reciprocal_reference(
        qf.double(), gf.double(), k1, k2, lam, dist=squared_euclidean_exact(X, X).__array__())))


# 1 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, 0, True, 2.5, "3"])
def test_rerank_tile_rows_is_checked(bad):
    qf, gf = _feats(4), _feats(8, seed=1)
    err = (TypeError, ValueError)
    with pytest.raises(err, match="tile_rows"):
        k_reciprocal(qf, gf, 5, 3, tile_rows=bad)
    d = torch.cdist(torch.cat([qf, gf]), torch.cat([qf, gf]))
    with pytest.raises(err, match="tile_rows"):
        k_reciprocal_from_distances(d[:4, 4:], d[:4, :4], d[4:, 4:], 5, 3, tile_rows=bad)
    with pytest.raises(err, match="tile_rows"):
        jaccard_distance(torch.cat([qf, gf]), 5, 3, tile_rows=bad)


# 2 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["bogus", "cuda"])
def test_evaluate_features_bad_backend_is_named(backend):
    if backend == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available")
    qf, gf = _feats(3), _feats(6, seed=1)
    with pytest.raises(ValueError, match="backend") as e:
        evaluate_features(qf, gf, [0, 1, 2], [0, 1, 2, 0, 1, 2], [0] * 3, [1] * 6, max_rank=5,
                          backend=backend)
    assert "overflow" not in str(e.value)


# 3, 4: scale-free algorithms do not depend on the feature scale -------------------------------
@pytest.mark.parametrize("dtype,scale", [(torch.float32, 2.0 ** 64), (torch.float32, 2.0 ** -70),
                                         (torch.float64, 2.0 ** 665), (torch.float64, 2.0 ** -600)])
def test_rerank_is_scale_free(dtype, scale):
    qf, gf = _feats(4, dtype=dtype), _feats(10, seed=1, dtype=dtype)
    want = _ref_rerank(qf, gf, 5, 3)
    got = k_reciprocal(qf * scale, gf * scale, 5, 3)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    X = torch.cat([qf, gf])
    j0 = jaccard_distance(X, 5, 3).toarray()
    j1 = jaccard_distance(X * scale, 5, 3).toarray()
    np.testing.assert_allclose(j1, j0, atol=1e-6)


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_rerank_from_distances_is_scale_free(scale):
    qf, gf = _feats(4), _feats(10, seed=1)
    X = torch.cat([qf, gf])
    d = torch.cdist(X, X)
    want = k_reciprocal_from_distances(d[:4, 4:], d[:4, :4], d[4:, 4:], 5, 3)
    got = k_reciprocal_from_distances(d[:4, 4:] * scale, d[:4, :4] * scale, d[4:, 4:] * scale, 5, 3)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_knn_float32_huge_values(backend):
    x = _feats(9, dtype=torch.float32) * 1e19
    d, i, m = knn(x, x, 4, backend=backend)
    d0, i0, m0 = knn_reference(x.double(), x.double(), 4, 0)
    assert torch.equal(i, i0)
    torch.testing.assert_close(d, d0, rtol=1e-12, atol=0)


def test_knn_float64_overflowing_distances_refused():
    x = _feats(9) * 1e200
    with pytest.raises(ValueError, match="x"):
        knn(x, x, 4)


def test_evaluate_features_is_scale_free():
    qf, gf = _feats(5, dtype=torch.float32), _feats(12, seed=1, dtype=torch.float32)
    ids = dict(q_pids=torch.arange(5), g_pids=torch.arange(12) % 5, q_camids=torch.zeros(5, dtype=torch.long),
               g_camids=torch.ones(12, dtype=torch.long), max_rank=5)
    for metric in ("euclidean", "cosine"):
        want = evaluate_features(qf, gf, metric=metric, **ids)
        for s in (2.0 ** 70, 2.0 ** -70):
            got = evaluate_features(qf * s, gf * s, metric=metric, **ids)
            assert torch.equal(got.first_hit, want.first_hit) and got.mAP == want.mAP, (metric, s)


# 5 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_topk_non_finite_scores_refused(backend, bad):
    scores = torch.rand(2, 6, 3)
    scores[1, 2, 0] = bad
    with pytest.raises(ValueError, match="scores"):
        topk_token_aggregate(scores, torch.rand(2, 6, 4), k=2, backend=backend)
    tokens = torch.rand(2, 6, 4)
    tokens[0, 0, 0] = bad
    with pytest.raises(ValueError, match="tokens"):
        topk_token_aggregate(torch.rand(2, 6, 3), tokens, k=2, backend=backend)


# 6 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_batch_hard_mining_huge_embeddings(backend, metric):
    E = _feats(8, dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    want = batch_hard_mining(E.double(), labels, metric, backend="reference")
    s = 1e20
    got = batch_hard_mining(E * s, labels, metric, backend=backend)
    assert torch.equal(got.p_index, want.p_index) and torch.equal(got.n_index, want.n_index)
    assert got.valid.all()
    f = s if metric == "euclidean" else 1.0
    torch.testing.assert_close(got.dist_ap.double() / f, want.dist_ap, rtol=1e-5, atol=1e-5)
    loss = TripletLoss(metric=metric, backend=backend)(E * s, labels)
    assert torch.isfinite(loss)


def test_batch_hard_mining_sqeuclidean_overflow_refused():
    E = _feats(8, dtype=torch.float32) * 1e20
    with pytest.raises(ValueError, match="embeddings"):
        batch_hard_mining(E, torch.arange(8) % 4, "sqeuclidean")


# 7 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_empty_tensors_with_odd_strides(backend):
    q = torch.empty(0, 2, 8, 3).transpose(2, 3)  # [0, 2, 3, 8], last stride != 1
    k = torch.empty(0, 2, 5, 8)
    out = template_attention(q, k, k.clone(), backend=backend).out
    assert out.shape == (0, 2, 3, 8)
    scores = torch.empty(0, 3, 5).transpose(1, 2)  # [0, 5, 3]
    tokens = torch.empty(0, 4, 5).transpose(1, 2)  # [0, 5, 4]
    parts, idx, sel = topk_token_aggregate(scores, tokens, k=2, backend=backend)
    assert parts.shape == (0, 3, 4) and idx.shape == (0, 3, 2) and sel.shape == (0, 5, 3)


# 8 ---------------------------------------------------------------------------------------------
def test_batch_zero_layers_and_losses():
    torch.manual_seed(0)
    dga = DictionaryCrossAttention(dim=16, num_atoms=5, num_heads=2, head_dim=8, ffn_dim=8)
    assert dga(torch.randn(0, 7, 16)).shape == (0, 7, 16)
    pgu = PrototypeUnification(dim=16, num_prototypes=2, num_layers=1, num_heads=2, head_dim=8,
                               ffn_dim=8, out_dim=4)
    assert pgu(torch.randn(0, 7, 16)).shape == (0, 2, 4)
    e = torch.randn(0, 6, requires_grad=True)
    for loss in (CrossModalRankingLoss()(e, torch.randn(0, 6)),
                 AMSoftmaxLoss(6, 3)(e, torch.zeros(0, dtype=torch.long)),
                 TripletLoss()(e, torch.zeros(0, dtype=torch.long))):
        assert loss.shape == () and float(loss.detach()) == 0.0
        loss.backward()


# 9 ---------------------------------------------------------------------------------------------
def test_template_cross_attention_batch_from_mask():
    torch.manual_seed(0)
    layer = TemplateCrossAttention(16, 2).double()
    q, c = torch.randn(4, 16, dtype=torch.float64), torch.randn(7, 16, dtype=torch.float64)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[1, 3:] = True
    out = layer(q, c, key_padding_mask=mask)
    assert out.shape == (3, 4, 16)
    for b in range(3):
        keep = ~mask[b]
        torch.testing.assert_close(out[b], layer(q, c[keep])[0])


# 11 --------------------------------------------------------------------------------------------
def test_meta_tensors():
    from reidkern._library import native_available
    if not native_available():
        pytest.skip("meta tensors go through the compiled ops' fake kernels")
    m = torch.device("meta")
    out = template_attention(torch.empty(2, 1, 3, 4, device=m), torch.empty(2, 1, 5, 4, device=m),
                             torch.empty(2, 1, 5, 4, device=m)).out
    assert out.shape == (2, 1, 3, 4) and out.device.type == "meta"
    parts, _, _ = topk_token_aggregate(torch.empty(2, 5, 3, device=m), torch.empty(2, 5, 4, device=m), k=2)
    assert parts.shape == (2, 3, 4)
    res = batch_hard_mining(torch.empty(6, 4, device=m), torch.zeros(6, dtype=torch.long, device=m))
    assert res.dist_ap.shape == (6,)
    with pytest.raises(ValueError, match="device"):  # mixed devices: the device error, by name
        template_attention(torch.empty(2, 1, 3, 4), torch.empty(2, 1, 5, 4, device=m),
                           torch.empty(2, 1, 5, 4, device=m))
    with pytest.raises(ValueError, match="meta"):
        evaluate_rank(torch.empty(3, 4, device=m), [0, 1, 2], [0, 1, 2, 3], [0] * 3, [1] * 4)
    with pytest.raises(ValueError, match="meta"):
        k_reciprocal(torch.empty(3, 4, device=m), torch.empty(5, 4, device=m), 2, 2)
    with pytest.raises(ValueError, match="device"):
        knn(torch.empty(3, 4), torch.empty(5, 4, device=m), 2)


# 12 --------------------------------------------------------------------------------------------
def test_papercuts():
    qf, gf = _feats(4), _feats(8, seed=1)
    d = torch.cdist(qf, gf)
    ids = (np.arange(4), np.arange(8) % 4, np.zeros(4, int), np.ones(8, int))
    r = evaluate_rank(d, *ids, max_rank=np.int64(3))
    assert len(r.cmc) == 3
    assert knn(qf, gf, np.int32(2))[1].shape == (4, 2)
    res = batch_hard_mining(torch.cat([qf, qf]), torch.arange(8) % 4, self_offset=np.int64(0))
    assert res.valid.all()
    s, t = torch.rand(2, 6, 3), torch.rand(2, 6, 4)
    assert topk_token_aggregate(s, t, k=np.int64(2))[1].shape == (2, 3, 2)
    with pytest.raises(ValueError, match="alpha"):
        topk_token_aggregate(s, t, alpha=float("inf"))
    with pytest.raises(ValueError, match="alpha"):
        topk_token_aggregate(s, t, alpha=float("nan"))
    with pytest.raises(TypeError, match="lambda_value"):
        k_reciprocal(qf, gf, 3, 2, lambda_value=None)
    with pytest.raises(ValueError, match="num_heads"):
        TemplateCrossAttention(16, 0)
    with pytest.raises(ValueError, match="head_dim"):
        TemplateCrossAttention(16, 32)
    with pytest.raises(TypeError, match="index_offset"):
        knn(qf, gf, 2, index_offset=2.7)
    with pytest.raises(ValueError, match="index_offset"):
        knn(qf, gf, 2, index_offset=-1)
    assert knn(qf, gf, 2, index_offset=np.int64(5))[1].min() >= 5
    X = torch.cat([qf, gf])
    for bad, err in ((0, ValueError), (-1, ValueError), (None, None), (True, TypeError)):
        if err is None:
            jaccard_distance(X, 3, 2, tile_rows=bad)  # None: the default
        else:
            with pytest.raises(err, match="tile_rows"):
                jaccard_distance(X, 3, 2, tile_rows=bad)


# 13 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_topk_kept_scores_summing_to_zero(backend):
    """Kept scores summing to 0 leave the sum unnormalised (divisor 1), as documented."""
    scores = torch.tensor([[[1.0], [-1.0]]], dtype=torch.float64)
    tokens = torch.tensor([[[1.0], [2.0]]], dtype=torch.float64)
    parts, _, _ = topk_token_aggregate(scores, tokens, k=2, backend=backend)
    assert float(parts) == -1.0
    doc = topk_token_aggregate.__doc__
    assert "divisor 1" in doc and "gets P = 0" not in doc


# 14 --------------------------------------------------------------------------------------------
def test_requires_grad_distmat():
    d = torch.rand(3, 6, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = evaluate_rank(d, [0, 1, 2], [0, 1, 2, 0, 1, 2], [0] * 3, [1] * 6, max_rank=6)
    assert not r.all_AP.requires_grad and not r.all_INP.requires_grad


# 15 --------------------------------------------------------------------------------------------
def test_rerank_float64_offset_features():
    qf, gf = _feats(6) + 1e6, _feats(14, seed=1) + 1e6
    want = _ref_rerank(qf, gf, 5, 3)
    got = k_reciprocal(qf, gf, 5, 3)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)



def test_topk_kernel_orders_nan_like_torch_sort():
    """The compiled kernel itself (reached without the Python check, e.g. from compiled graphs)
    ranks NaN first, ties by index, as the reference's torch.sort does: no undefined behaviour."""
    from reidkern._library import native_available
    if not native_available():
        pytest.skip("compiled library not built")
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 40, 2, generator=g, dtype=torch.float64)
    scores[0, [3, 17, 30], 0] = float("nan")
    scores[1, :, 1] = float("nan")
    scores[2, ::3, 0] = 0.5  # ties
    tokens = torch.rand(3, 40, 4, generator=g, dtype=torch.float64)
    for k in (1, 5, 40):
        _, idx, _ = torch.ops.reidkern.topk_token_aggregate_fwd(scores, tokens, k)
        want = torch.sort(scores.transpose(1, 2), dim=-1, descending=True, stable=True).indices[..., :k]
        assert torch.equal(idx, want)

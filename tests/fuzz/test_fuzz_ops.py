"""Property-based fuzzing of the ops and metrics: every call either raises ValueError/TypeError
naming an argument, or returns the float64 reference's result within the dtype's tolerance, for
every backend present (C++ and reference on CPU; Triton under TRITON_INTERPRET=1, tiny shapes)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from reidkern.metrics import evaluate_features, evaluate_rank
from reidkern.ops.batch_hard_mining import batch_hard_mining
from reidkern.ops.knn import knn
from reidkern.ops.reference.batch_hard_mining import (batch_hard_mining_reference,
                                                      pairwise_distance_matrix)
from reidkern.ops.reference.evaluate_rank import evaluate_rank_reference
from reidkern.ops.reference.knn import knn_reference
from reidkern.ops.reference.template_attention import template_attention_reference
from reidkern.ops.reference.topk_token_aggregate import topk_token_aggregate_reference
from reidkern.ops.template_attention import template_attention
from reidkern.ops.topk_token_aggregate import topk_token_aggregate
from reidkern.testing import backends_for

from fuzz_strategies import finite, outcome, tensors

BACKENDS = backends_for("cpu")
INTS = st.one_of(st.integers(-2, 9), st.sampled_from([np.int64(2), np.int32(1), True, 2.5, "3", None]))


def _is_int(v, lo=None):
    return (isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            and (lo is None or v >= lo))


def _ids(draw, n, hi=3):
    return torch.tensor(draw(st.lists(st.integers(0, hi), min_size=n, max_size=n)), dtype=torch.int64)


def _two_sets(draw, rows_x, rows_y):
    """Feature sets x [M, D], y [N, D] of one drawn dtype: M and N drawn from the inclusive
    ranges rows_x and rows_y, D from 1-4 (knn's x and y, evaluate_features' qf and gf)."""
    M, N, D = draw(st.integers(*rows_x)), draw(st.integers(*rows_y)), draw(st.integers(1, 4))
    x, _ = draw(tensors((M, D)))
    y, _ = draw(tensors((N, D), dtypes=(x.dtype,)))
    return x, y


def _exponent(*ts):
    m = max((float(t.abs().max()) for t in ts if t.numel()), default=0.0)
    return math.frexp(m)[1] if m else 0


def _amax(t):
    return float(t.abs().max()) if t.numel() else 0.0


def _up(t, e):
    """t * 2^e in float64 (inf when out of range)."""
    return torch.ldexp(torch.as_tensor(t, dtype=torch.float64), torch.tensor(e, dtype=torch.float64))


def _down(t, e):
    return torch.ldexp(t.double(), torch.tensor(-e, dtype=torch.float64))


# ---- knn -----------------------------------------------------------------------------------------
@given(st.data())
def test_knn(data):
    draw = data.draw
    x, y = _two_sets(draw, (0, 6), (0, 7))
    k = draw(INTS)
    offset = draw(st.sampled_from([0, 3, -1, 2.7, np.int64(1)]))
    backend = draw(st.sampled_from(BACKENDS))
    res, err = outcome(lambda: knn(x, y, k, offset, backend=backend),
                       ("x", "y", "k", "index_offset", "backend"))
    ok_params = _is_int(k, 1) and _is_int(offset, 0)
    if not finite(x, y) or not ok_params:
        assert err is not None
        return
    amax = max((float(t.abs().max()) for t in (x, y) if t.numel()), default=0.0)
    if x.dtype == torch.float64 and (amax > 2.0 ** 480 or 0 < amax < 2.0 ** -480):
        assert isinstance(err, ValueError)  # squared distances leave float64's range: refused
        return
    assert err is None, err
    d, i, m = res
    d0, i0, m0 = knn_reference(x.double(), y.double(), int(k), int(offset))
    assert torch.equal(i, i0)
    torch.testing.assert_close(d, d0, rtol=1e-12, atol=0)
    torch.testing.assert_close(m, m0, rtol=1e-12, atol=0)


# ---- evaluate_rank / evaluate_features -----------------------------------------------------------
def _check_rank_result(res, err, dist64, ids, trapezoid):
    first, ap, inp = evaluate_rank_reference(dist64, *ids, trapezoid)
    if not bool((first >= 0).any()):
        assert isinstance(err, ValueError)  # no query with a true match
        return
    assert err is None, err
    valid = first >= 0
    assert torch.equal(res.first_hit, first)
    torch.testing.assert_close(res.all_AP[valid], ap[valid].double(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.all_INP[valid], inp[valid].double(), rtol=1e-12, atol=1e-12)


@given(st.data())
def test_evaluate_rank(data):
    draw = data.draw
    Q, G = draw(st.integers(0, 5)), draw(st.integers(0, 8))
    distmat, _ = draw(tensors((Q, G)))
    ids = (_ids(draw, Q), _ids(draw, G), _ids(draw, Q, 1), _ids(draw, G, 1))
    max_rank = draw(INTS)
    trapezoid = draw(st.booleans())
    backend = draw(st.sampled_from(BACKENDS))
    res, err = outcome(lambda: evaluate_rank(distmat, *ids, max_rank=max_rank, trapezoid=trapezoid,
                                             backend=backend),
                       ("distmat", "q_pids", "g_pids", "max_rank", "backend"))
    if Q == 0 or G == 0 or not finite(distmat) or not _is_int(max_rank, 1):
        assert err is not None  # evaluation of nothing is undefined; NaN/inf refused
        return
    _check_rank_result(res, err, distmat.double(), ids, trapezoid)


def _separated(dist, gf, tol):
    """No two gallery entries of a row whose distances differ by less than ``tol`` (relative to
    the row's scale) without being the same feature: there the float32 ranking may differ."""
    for row in dist:
        scale = float(row.abs().max()) or 1.0
        for j in range(len(row)):
            for m in range(j + 1, len(row)):
                if abs(float(row[j] - row[m])) <= tol * scale and not torch.equal(gf[j], gf[m]):
                    return False
    return True


@given(st.data())
def test_evaluate_features(data):
    draw = data.draw
    qf, gf = _two_sets(draw, (1, 4), (1, 7))
    Q, G = len(qf), len(gf)
    ids = (_ids(draw, Q), _ids(draw, G), _ids(draw, Q, 1), _ids(draw, G, 1))
    metric = draw(st.sampled_from(["euclidean", "cosine", "bogus"]))
    backend = draw(st.sampled_from(BACKENDS + ["bogus"]))
    res, err = outcome(lambda: evaluate_features(qf, gf, *ids, metric=metric, max_rank=3,
                                                 backend=backend),
                       ("qf", "gf", "q_pids", "metric", "backend"))
    if not finite(qf, gf) or "bogus" in (metric, backend):
        assert err is not None
        return
    e = _exponent(qf, gf)  # rankings are scale-free: the reference runs on the rescaled features
    q64, g64 = _down(qf, e), _down(gf, e)
    if metric == "cosine":
        q64, g64 = torch.nn.functional.normalize(q64, dim=1), torch.nn.functional.normalize(g64, dim=1)
        dist = 1 - q64 @ g64.t()
    else:
        dist = ((q64[:, None, :] - g64[None, :, :]) ** 2).sum(-1)
    tol = 1e-5 if qf.dtype == torch.float32 else 1e-12
    assume(_separated(dist, gf, tol) or err is not None)
    _check_rank_result(res, err, dist, ids, False)


# ---- batch_hard_mining ---------------------------------------------------------------------------
@given(st.data())
def test_batch_hard_mining(data):
    draw = data.draw
    B, D = draw(st.integers(0, 7), ), draw(st.integers(1, 4))
    x, _ = draw(tensors((B, D)))
    labels = _ids(draw, B, 2)
    use_ref = draw(st.booleans())
    y = ly = None
    if use_ref:
        M = draw(st.integers(0, 6))
        y, _ = draw(tensors((M, D), dtypes=(x.dtype,)))
        ly = _ids(draw, M, 2)
    metric = draw(st.sampled_from(["euclidean", "sqeuclidean", "cosine"]))
    self_offset = draw(st.sampled_from([None, 0, 1, np.int64(0), 1.5]))
    backend = draw(st.sampled_from(BACKENDS))
    res, err = outcome(lambda: batch_hard_mining(x, labels, metric, y, ly, self_offset, backend),
                       ("embeddings", "labels", "ref_embeddings", "self_offset", "backend"))
    if not finite(x, *(() if y is None else (y,))) or self_offset == 1.5:
        assert err is not None
        return
    ts = (x,) if y is None else (x, y)
    e = _exponent(*ts)
    e = e if e > (32 if x.dtype == torch.float32 else 256) else 0  # the op rescales only huge input
    xd, yd = _down(x, e), (None if y is None else _down(y, e))
    ref = batch_hard_mining_reference(xd, labels, yd, ly, metric, None if self_offset is None else int(self_offset))
    fe = 0 if metric == "cosine" else e if metric == "euclidean" else 2 * e  # distances scale 2^fe
    if err is not None:  # only a distance that does not fit the dtype may be refused
        assert isinstance(err, ValueError) and metric != "cosine" and e > 0
        biggest = max(_amax(ref[0]), _amax(ref[1]))
        assert not bool(torch.isfinite(_up(biggest, fe).to(x.dtype)))
        return
    assert torch.equal(res.valid, (ref[2] >= 0) & (ref[3] >= 0))
    # distances, relative to the batch's scale; euclidean near 0 carries sqrt(eps) * |x| (the
    # documented |x|^2 + |y|^2 - 2xy form)
    norm = _amax(torch.cat([xd] + ([] if yd is None else [yd])).norm(dim=1)) or 1.0
    eps = 1e-6 if x.dtype == torch.float32 else 1e-15
    atol = {"euclidean": 20 * math.sqrt(eps) * norm, "sqeuclidean": 20 * eps * norm ** 2,
            "cosine": 20 * eps}[metric]
    fi = torch.finfo(x.dtype)
    atol = max(atol, float(_up(8 * fi.smallest_normal * fi.eps, -fe)))  # subnormal results
    for got, want in ((res.dist_ap, ref[0]), (res.dist_an, ref[1])):
        torch.testing.assert_close(_up(got.double(), -fe), want, rtol=1e-4, atol=atol)
    dist = pairwise_distance_matrix(xd, xd if yd is None else yd, metric)
    rows = torch.arange(B)
    cand = labels if ly is None else ly
    for idx, best, same in ((res.p_index, ref[0], True), (res.n_index, ref[1], False)):
        has = idx >= 0
        assert torch.equal(has, (ref[2] if same else ref[3]) >= 0)
        chosen = idx[has]
        assert bool(((cand[chosen] == labels[has]) == same).all())
        torch.testing.assert_close(dist[rows[has], chosen], best[has], rtol=1e-4, atol=atol)


# ---- template_attention --------------------------------------------------------------------------
@given(st.data())
def test_template_attention(data):
    draw = data.draw
    B, H, Nq, L, D = (draw(st.integers(0, 2)), draw(st.integers(1, 2)), draw(st.integers(0, 3)),
                      draw(st.integers(0, 5)), draw(st.integers(1, 4)))
    Bq = draw(st.sampled_from([B, 1]))
    Bk = draw(st.sampled_from([B, 1]))
    q, _ = draw(tensors((Bq, H, Nq, D)))
    k, _ = draw(tensors((Bk, H, L, D), dtypes=(q.dtype,)))
    v, _ = draw(tensors((Bk, H, L, D), dtypes=(q.dtype,), regimes=("normal", "ties", "nonfinite")))
    use_mask = draw(st.booleans())
    mask = torch.rand(B if use_mask and B != 1 else max(B, 1) if use_mask else 0, L,
                      generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))) < 0.4 \
        if use_mask else None
    scale = draw(st.sampled_from([None, 1.0, 0.5, np.float32(0.3), math.nan, "x"]))
    rw, rm = draw(st.booleans()), draw(st.booleans())
    backend = draw(st.sampled_from(BACKENDS))
    res, err = outcome(
        lambda: template_attention(q, k, v, mask, scale, return_weights=rw, return_mean_logit=rm,
                                   backend=backend),
        ("q", "k", "v", "key_padding_mask", "scale", "backend"))
    if not finite(q, k, v) or scale == "x" or (isinstance(scale, float) and math.isnan(scale)):
        assert err is not None
        return
    if err is not None:
        # batch sizes that cannot broadcast, or logits that could overflow the compute dtype
        msg = str(err)
        assert "must be" in msg or "overflow" in msg, msg
        return
    s = 1 / math.sqrt(D) if scale is None else float(scale)
    Bt = k.shape[0] if k.shape[0] != 1 else q.shape[0]  # the op's rule: k, q, then mask rows
    if Bt == 1 and mask is not None:
        Bt = mask.shape[0]
    q64, k64, v64 = q.double(), k.double(), v.double()
    if k64.shape[0] == 1 and Bt != 1:
        k64, v64 = k64.expand(Bt, -1, -1, -1), v64.expand(Bt, -1, -1, -1)
    out, w, ml = template_attention_reference(q64, k64, v64, mask, s)
    assert (res.weights is None) != rw and (res.mean_logit is None) != rm
    outs = [res.out] + ([res.weights] if rw else []) + ([res.mean_logit] if rm else [])
    want = (out,) + ((w,) if rw else ()) + ((ml,) if rm else ())
    tol = 1e-4 if q.dtype == torch.float32 else 1e-10
    for got, exp in zip(outs, want):
        scale_v = _amax(exp) or 1.0
        torch.testing.assert_close(got.double(), exp, rtol=tol, atol=tol * scale_v)


# ---- topk_token_aggregate ------------------------------------------------------------------------
@given(st.data())
def test_topk_token_aggregate(data):
    draw = data.draw
    B, L, Np, C = (draw(st.integers(0, 2)), draw(st.integers(0, 6)), draw(st.integers(0, 3)),
                   draw(st.integers(0, 3)))
    scores, _ = draw(tensors((B, L, Np)))
    if draw(st.booleans()):  # CAL's scores: a softmax over the parts (non-negative)
        scores = scores.abs()
    tokens, _ = draw(tensors((B, L, C), dtypes=(scores.dtype,)))
    use_alpha = draw(st.booleans())
    k = None if use_alpha else draw(INTS)
    alpha = draw(st.sampled_from([0.5, 1.0, 3.0, 0.0, math.inf, math.nan, "a"])) if use_alpha else None
    backend = draw(st.sampled_from(BACKENDS))
    res, err = outcome(lambda: topk_token_aggregate(scores, tokens, k=k, alpha=alpha, backend=backend),
                       ("scores", "tokens", "k", "alpha", "backend"))
    if not finite(scores, tokens) or L == 0:
        assert err is not None
        return
    if use_alpha:
        good = isinstance(alpha, float) and 0 < alpha < math.inf and Np > 0 and \
            math.ceil(alpha * L / Np) <= L
        kk = max(math.ceil(alpha * L / Np), 1) if good else None
    else:
        good = _is_int(k, 1) and k <= L
        kk = int(k) if good else None
    if not good:
        assert err is not None
        return
    if err is not None:
        assert "overflow" in str(err), err
        return
    parts, idx, sel = res
    p0, i0, s0 = topk_token_aggregate_reference(scores.double(), tokens.double(), kk)
    assert torch.equal(idx, i0)
    torch.testing.assert_close(sel.double(), s0, rtol=0, atol=0)
    # P = sum(S T) / sum(S): where the kept scores nearly cancel the quotient is ill-conditioned
    kept = s0.transpose(1, 2)
    z, zabs = kept.sum(-1), kept.abs().sum(-1)
    ok = z.abs() > 1e-3 * zabs
    tol = 1e-4 if scores.dtype == torch.float32 else 1e-10
    scale = _amax(tokens) or 1.0
    torch.testing.assert_close(parts.double()[ok], p0[ok], rtol=tol, atol=tol * scale)

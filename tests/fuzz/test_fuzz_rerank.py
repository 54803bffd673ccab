"""Property-based fuzzing of k-reciprocal re-ranking and the Jaccard distance against the dense
float64 reference of the published algorithm (reidkern/ops/reference/k_reciprocal.py). The
re-ranked distance is scale-free, so the reference runs on the inputs scaled by a power of two
(exact) into [0.5, 1): huge and tiny inputs must give the same answer as ordinary ones."""
import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from reidkern.ops.reference.k_reciprocal import (_rerank_core, squared_euclidean_exact)
from reidkern.rerank import jaccard_distance, k_reciprocal, k_reciprocal_from_distances
from reidkern.testing import backends_for

from fuzz_strategies import finite, outcome, tensors

BACKENDS = backends_for("cpu", supported=("cpp", "reference"))
LAMBDAS = [0.0, 0.3, 1.0, np.float32(0.5), 0.3, 0.3, -0.1, 1.5, None, "x"]
TILES = [None, None, None, 1, 2, np.int64(3), 0, -1, True, 2.5]


def _params(draw):
    """(k1, k2): mostly valid (so most examples reach the comparison), sometimes hostile."""
    if draw(st.integers(0, 3)) == 0:
        return (draw(st.sampled_from([0, -1, True, 2.0, np.int64(2), 3])),
                draw(st.sampled_from([0, 5, 1.0, np.int32(1), None])))
    k1 = draw(st.integers(1, 4))
    return k1, draw(st.integers(1, k1 + 1))


def _valid_int(v, lo):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo


def _valid_params(k1, k2, n):
    return _valid_int(k1, 1) and _valid_int(k2, 1) and k2 <= k1 + 1 and n >= k1 + 1


def _rescale(*ts):
    m = max((float(t.abs().max()) for t in ts if t.numel()), default=0.0)
    e = math.frexp(m)[1] if m else 0
    return [torch.ldexp(t.double(), torch.tensor(-e, dtype=torch.float64)).numpy() for t in ts]


@given(st.data())
def test_k_reciprocal(data):
    draw = data.draw
    Q, G, D = draw(st.integers(1, 4)), draw(st.integers(1, 7)), draw(st.integers(1, 3))
    qf, _ = draw(tensors((Q, D)))
    gf, _ = draw(tensors((G, D), dtypes=(qf.dtype, torch.float32, torch.float64)))
    k1, k2 = _params(draw)
    lam = draw(st.sampled_from(LAMBDAS))
    tile_rows = draw(st.sampled_from(TILES))
    backend = draw(st.sampled_from(BACKENDS))
    res, err = outcome(lambda: k_reciprocal(qf, gf, k1, k2, lam, backend=backend, tile_rows=tile_rows),
                       ("qf", "gf", "k1", "k2", "lambda_value", "tile_rows", "backend"))
    ok = (finite(qf, gf) and _valid_params(k1, k2, Q + G) and tile_rows in (None, 1, 2, 3)
          and not isinstance(tile_rows, bool) and isinstance(lam, (float, np.floating))
          and 0 <= lam <= 1)
    if not ok:
        assert err is not None
        return
    x = np.concatenate(_rescale(qf, gf))
    dist = squared_euclidean_exact(x, x)
    if dist.max() == 0:  # every sample identical: the normalisation divides by 0
        assert isinstance(err, ValueError)
        return
    assert err is None, err
    want = _rerank_core(dist, Q, int(k1), int(k2), float(lam))
    assert res.dtype == torch.float32 and res.shape == (Q, G)
    np.testing.assert_allclose(res.numpy(), want, rtol=0, atol=1e-5)


@given(st.data())
def test_jaccard_distance(data):
    draw = data.draw
    N, D = draw(st.integers(1, 9)), draw(st.integers(1, 3))
    X, _ = draw(tensors((N, D)))
    k1, k2 = _params(draw)
    tile_rows = draw(st.sampled_from(TILES))
    backend = draw(st.sampled_from(BACKENDS))
    res, err = outcome(lambda: jaccard_distance(X, k1, k2, backend=backend, tile_rows=tile_rows),
                       ("features", "k1", "k2", "tile_rows", "backend"))
    if not (finite(X) and _valid_params(k1, k2, N) and tile_rows in (None, 1, 2, 3)
            and not isinstance(tile_rows, bool)):
        assert err is not None
        return
    x, = _rescale(X)
    dist = squared_euclidean_exact(x, x)
    if dist.max() == 0:
        assert isinstance(err, ValueError)
        return
    assert err is None, err
    want = _rerank_core(dist, N, int(k1), int(k2), 0.0, all_pairs=True)
    got = np.ones((N, N))
    coo = res.tocoo()
    got[coo.row, coo.col] = coo.data
    np.testing.assert_allclose(got, np.maximum(want, 0), rtol=0, atol=1e-9)


@given(st.data())
def test_k_reciprocal_from_distances(data):
    draw = data.draw
    Q, G = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    if draw(st.booleans()):  # Euclidean distances of features
        f, _ = draw(tensors((Q + G, draw(st.integers(1, 3))), regimes=("normal", "ties", "huge", "tiny")))
        e = math.frexp(float(f.abs().max()) or 1.0)[1]
        d = torch.ldexp(torch.cdist(torch.ldexp(f.double(), torch.tensor(-e)), torch.ldexp(f.double(), torch.tensor(-e))),
                        torch.tensor(float(e), dtype=torch.float64)).to(f.dtype)
    else:  # any matrix (the published code squares whatever it is given)
        d, _ = draw(tensors((Q + G, Q + G)))
    q_g, q_q, g_g = d[:Q, Q:], d[:Q, :Q], d[Q:, Q:]
    k1, k2 = _params(draw)
    lam = draw(st.sampled_from(LAMBDAS))
    tile_rows = draw(st.sampled_from(TILES))
    res, err = outcome(lambda: k_reciprocal_from_distances(q_g, q_q, g_g, k1, k2, lam, tile_rows=tile_rows),
                       ("q_g_dist", "q_q_dist", "g_g_dist", "k1", "k2", "lambda_value", "tile_rows"))
    ok = (finite(d) and _valid_params(k1, k2, Q + G) and tile_rows in (None, 1, 2, 3)
          and not isinstance(tile_rows, bool) and isinstance(lam, (float, np.floating))
          and 0 <= lam <= 1)
    if not ok:
        assert err is not None
        return
    a, b, c = _rescale(q_g, q_q, g_g)
    full = np.concatenate([np.concatenate([b, a], 1), np.concatenate([a.T, c], 1)], 0) ** 2
    if (full.max(axis=0) <= 0).any():
        assert isinstance(err, ValueError)
        return
    assert err is None, err
    want = _rerank_core(full, Q, int(k1), int(k2), float(lam))
    np.testing.assert_allclose(res.numpy(), want, rtol=0, atol=1e-5)

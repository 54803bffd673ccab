"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017) without any N x N array.

Pipeline (N = Q + G samples, all O(N k) memory except the dense [Q, G] output):

1. ``reidkern::knn`` over all N samples: the k1+2 nearest by exact float64 squared Euclidean
   distance, and each row's maximum distance (tiled; never an N x N array).
2. Initial ranking: neighbours ordered by (distance / row maximum, index), first k1+1 kept -- the
   published ``argsort`` of the normalised row, with ties ordered by index (stable).
3. ``reidkern::k_reciprocal_expand``: expanded k-reciprocal sets (sparse).
4. Weights exp(-original) normalised over each set: V as CSR (float64).
5. ``reidkern::sparse_rows_mean``: query expansion over the k2 nearest (k2 != 1).
6. ``reidkern::jaccard_sum_min`` through an inverted index of the gallery rows; the Jaccard
   distance 1 - s / (2 - s) is mixed with the original distance, tile by tile of query rows.

Exactness: the neighbour search compares float64 distances (the C++ kernel rechecks BLAS
candidates in float64 under a rigorous rounding bound); everything after it is float64; the output
is float32 and matches the float64 dense reference (reidkern/ops/reference/k_reciprocal.py).
"""
import math

import numpy as np
import torch

from reidkern.distributed import all_gather_rows
from reidkern.ops import _validate as V
from reidkern.ops._backend import resolve_backend
from reidkern.ops.k_reciprocal import (jaccard_rerank, jaccard_sum_min, k_reciprocal_expand,
                                       pair_sq_dist, sparse_rows_mean)
from reidkern.ops.knn import knn
from reidkern.ops.reference import k_reciprocal as ref

_SUPPORTED = ("cpp", "cuda", "triton", "reference")
_PROGRESS_MIN_N = 20000  # default: show progress bars from this many samples


# ---- validation ---------------------------------------------------------------------------------

_NO_LAMBDA = object()  # jaccard_distance has no lambda_value


def _check_params(k1, k2, lambda_value, num_samples):
    k1 = V.check_int(k1, "k1", minimum=1)
    k2 = V.check_int(k2, "k2")
    if k2 < 1 or k2 > k1 + 1:
        raise ValueError(f"k2 must be in [1, k1 + 1] = [1, {k1 + 1}], got {k2}")
    if lambda_value is not _NO_LAMBDA:
        if isinstance(lambda_value, (bool, np.bool_)) or not isinstance(
                lambda_value, (int, float, np.integer, np.floating)):
            raise TypeError(f"lambda_value must be a number in [0, 1], got "
                            f"{type(lambda_value).__name__}")
        if not 0.0 <= float(lambda_value) <= 1.0:
            raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    if num_samples < k1 + 1:
        raise ValueError(f"k1={k1} needs at least k1 + 1 = {k1 + 1} samples in all, got "
                         f"{num_samples}")
    return int(k1), int(k2)


def _check_features(t, name, shape_doc="[num_samples, dim]"):
    """2-D real features; finiteness and meta are checked by _check_values once devices agree."""
    t = V.floating(V.as_tensor(t, name), name)
    V.check_ndim(t, 2, name, shape_doc)
    if t.shape[1] == 0:
        raise ValueError(f"{name} has feature dimension 0")
    return t


def _check_values(*named):
    for name, t in named:
        V.check_not_meta(t, name)
        V.check_finite(t, name)


# The re-ranked distance is scale-free (distances are divided by each row's maximum): features
# whose largest magnitude lies outside [2^-16, 2^16] are scaled by a power of two (exact) first,
# so squared distances neither overflow nor underflow, in float32 or float64.
_SCALE_LOW, _SCALE_HIGH = -16, 16


def _rescaled(amax, *ts):
    e = V.pow2_exponent(amax, _SCALE_LOW, _SCALE_HIGH)
    return ts if e == 0 else tuple(torch.ldexp(t, t.new_tensor(-e)) for t in ts)


def _progress(it, enabled, desc, total=None):
    if not enabled:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc, total=total, leave=False)


# ---- shared sparse pipeline ---------------------------------------------------------------------

def _merge_neighbours(dist, idx, k):
    """Top-k of candidate lists [N, C] by (distance, index)."""
    order = torch.argsort(idx, dim=1, stable=True)
    dist, idx = dist.gather(1, order), idx.gather(1, order)
    order = torch.argsort(dist, dim=1, stable=True)[:, :k]
    return dist.gather(1, order), idx.gather(1, order)


def _initial_ranks(dist, idx, row_max, k1):
    """Published initial ranking from the nearest-neighbour lists: rows ordered by
    (distance / row maximum, index), the first k1 + 1 kept."""
    normalised = dist / row_max[:, None]
    _, ranks = _merge_neighbours(normalised, idx, k1 + 1)
    return ranks.contiguous()


def _encode(ranks, k1, k2, pair_original):
    """V (after query expansion) as CSR (crow, cols, vals float64) over all N samples.

    ``pair_original(rows, cols)`` gives the normalised original distance of each pair (float64)."""
    crow, cols = k_reciprocal_expand(ranks, k1)
    rows = torch.repeat_interleave(torch.arange(len(crow) - 1), crow.diff())
    weight = torch.exp(-pair_original(rows, cols))
    sums = torch.zeros(len(crow) - 1, dtype=torch.float64).index_add_(0, rows, weight)
    vals = weight / sums[rows]
    if k2 != 1:
        crow, cols, vals = sparse_rows_mean(crow, cols, vals, ranks.cpu(), k2)
    return crow, cols, vals


def _csr_rows(crow, cols, vals, start, end):
    a, b = int(crow[start]), int(crow[end])
    return crow[start:end + 1] - a, cols[a:b], vals[a:b]


def _inverted_index(crow, cols, vals, start, end, num_columns):
    """For rows [start, end) of V: for every column l, the (row - start, value) pairs holding it."""
    sub_crow, sub_cols, sub_vals = _csr_rows(crow, cols, vals, start, end)
    rows = torch.repeat_interleave(torch.arange(end - start), sub_crow.diff())
    order = torch.argsort(sub_cols, stable=True)
    counts = torch.bincount(sub_cols, minlength=num_columns)
    t_ptr = torch.zeros(num_columns + 1, dtype=torch.int64)
    t_ptr[1:] = torch.cumsum(counts, 0)
    return t_ptr, rows[order].contiguous(), sub_vals[order].contiguous()


def _jaccard_dense_tiles(V_csr, q_range, t_range, num_columns, original_tile, lambda_value, out,
                         progress, tile_rows):
    """Fills out [Q, T] = (1 - lambda) * Jaccard + lambda * original for query rows ``q_range``
    against target rows ``t_range``."""
    crow, cols, vals = V_csr
    q0, q1 = q_range
    t0, t1 = t_range
    num_t = t1 - t0
    inv = _inverted_index(crow, cols, vals, t0, t1, num_columns)
    starts = range(q0, q1, tile_rows)
    for s in _progress(starts, progress, "re-ranking: jaccard", total=len(starts)):
        e = min(s + tile_rows, q1)
        orig = original_tile(s - q0, e - q0).to(torch.float64).cpu()
        final = jaccard_rerank(*_csr_rows(crow, cols, vals, s, e), *inv, orig, lambda_value)
        out[s - q0:e - q0] = final.to(out.device)


# ---- distributed helpers ------------------------------------------------------------------------

def _dist_info(group):
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("distributed=True needs an initialised torch.distributed process group")
    return dist, dist.get_world_size(group), dist.get_rank(group)


# ---- features form ------------------------------------------------------------------------------

def _knn_features(X, k, col_range, backend, progress, chunk=4096):
    c0, c1 = col_range
    Y = X[c0:c1]
    outs = []
    starts = range(0, X.shape[0], chunk)
    for s in _progress(starts, progress, "re-ranking: neighbours", total=len(starts)):
        # the callers have checked X (finite, 2-D, one device): no re-check of all of Y per chunk
        outs.append(knn(X[s:s + chunk], Y, k, index_offset=c0, backend=backend, validate=False))
    return tuple(torch.cat([o[i] for o in outs]).cpu() for i in range(3))


def k_reciprocal(qf, gf, k1=20, k2=6, lambda_value=0.3, *, backend=None, progress=None,
                 distributed=False, group=None, tile_rows=None):
    """k-reciprocal re-ranked distance between query and gallery features (Zhong et al., CVPR 2017).

    Exactly the published algorithm (see reidkern/ops/reference/k_reciprocal.py) on the squared
    Euclidean distance over all N = Q + G samples, each row divided by its maximum over all N;
    neighbour ties are ordered by index. Memory O(N (k1 + D)) plus the [Q, G] output: the nearest
    neighbours come from a tiled search (``reidkern.ops.knn``), V is sparse, and the Jaccard
    distance goes through an inverted index of the gallery rows.

    Args:
        qf: [Q, D] query features; gf: [G, D] gallery features (this rank's shard of the gallery
            when ``distributed``). float32/float64 (float16/bfloat16 widened), CPU or CUDA.
        k1: k of the k-reciprocal sets (>= 1; the paper uses 20).
        k2: query-expansion neighbours (1 <= k2 <= k1 + 1; 1 disables it; the paper uses 6).
        lambda_value: weight of the original distance, in [0, 1] (the paper uses 0.3).
        backend: neighbour-search backend, "cpp" | "cuda" | "triton" | "reference"; "reference"
            runs the dense float64 reference (O(N^2) memory). The sparse steps run in C++ on CPU.
        progress: tqdm progress bars; default when N >= 20,000.
        distributed: shard the work with torch.distributed (gloo for CPU tensors, NCCL for CUDA):
            every rank passes the same ``qf`` and its own gallery shard ``gf`` (rank order = gallery
            order); neighbour candidates are merged across ranks, so the result equals the
            single-process one. Collective: every rank of ``group`` must call it.
        group: process group (default: the world).
        tile_rows: query rows per Jaccard tile (default: about 32 MB of float64 per tile).

    Returns:
        [Q, G] float32 re-ranked distance on qf's device (smaller = more similar), usable with
        :func:`reidkern.metrics.evaluate_rank`. With ``distributed``, the [Q, G_rank] columns of
        this rank's gallery shard.

    Raises:
        ValueError: features not 2-D, different feature dimensions or devices, NaN/inf features,
            k1 < 1, k2 outside [1, k1 + 1], fewer than k1 + 1 samples, lambda_value outside [0, 1],
            tile_rows < 1, all samples identical (every distance 0), meta tensors.
        TypeError: non-int k1/k2/tile_rows, a non-number lambda_value, non-numeric features.

    Scale: the result does not depend on the features' scale; any finite float32/float64 features
    are accepted (a power-of-two rescaling, which is exact, keeps squared distances in range).
    """
    qf = _check_features(qf, "qf", "[num_query, dim]")
    gf = _check_features(gf, "gf", "[num_gallery, dim]")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"qf and gf must have the same feature dimension, got {qf.shape[1]} and "
                         f"{gf.shape[1]}")
    if qf.device != gf.device:
        raise ValueError(f"qf is on {qf.device} but gf is on {gf.device}")
    _check_values(("qf", qf), ("gf", gf))
    tile_rows = V.check_tile_rows(tile_rows)
    if qf.shape[0] == 0:
        raise ValueError("qf is empty (no query)")
    device = qf.device
    dtype = torch.float64 if torch.float64 in (qf.dtype, gf.dtype) else torch.float32
    qf, gf = qf.to(dtype), gf.to(dtype)
    num_q = qf.shape[0]
    if distributed:
        rank = _dist_info(group)[2]
        shards = all_gather_rows(gf, group)
        sizes = [s.shape[0] for s in shards]
        gf_all = torch.cat(shards)
    else:
        rank, sizes, gf_all = 0, [gf.shape[0]], gf
    num_g = gf_all.shape[0]
    if num_g == 0:
        raise ValueError("gf is empty (no gallery)")
    k1, k2 = _check_params(k1, k2, lambda_value, num_q + num_g)
    lambda_value = float(lambda_value)
    choice = resolve_backend("k_reciprocal", device, backend, supported=_SUPPORTED)
    qf, gf_all = _rescaled(V.max_abs(qf, gf_all), qf, gf_all)
    g0 = num_q + sum(sizes[:rank])
    g1 = g0 + sizes[rank]
    if choice == "reference":
        X = torch.cat([qf, gf_all])
        if bool((X == X[:1]).all()):  # the kernels' row_max check, for the dense path
            raise ValueError("qf/gf: every sample is identical to every other (all distances are 0)")
        out = ref.k_reciprocal_reference(qf, gf_all, k1, k2, lambda_value,
                                         dist=ref.squared_euclidean_exact(X, X).__array__())
        return out[:, g0 - num_q:g1 - num_q].to(device=device, dtype=torch.float32)
    X = torch.cat([qf, gf_all]).contiguous()
    N = X.shape[0]
    if progress is None:
        progress = N >= _PROGRESS_MIN_N
    k = min(k1 + 2, N)
    cols = (0 if rank == 0 else g0, g1)
    if choice == "cpp" and cols == (0, N):
        # all samples against all samples: the self search computes each pair's product once
        d, idx, row_max = knn(X, X, k, backend=choice, validate=False)
    else:
        d, idx, row_max = _knn_features(X, k, cols, choice, progress)
    if distributed:
        ds = all_gather_rows(d.to(device), group)
        ids = all_gather_rows(idx.to(device), group)
        ms = all_gather_rows(row_max.to(device), group)
        d, idx = _merge_neighbours(torch.cat(ds, 1).cpu(), torch.cat(ids, 1).cpu(), k)
        row_max = torch.stack(ms).amax(0).cpu()
    if not bool((row_max > 0).all()):
        raise ValueError("qf/gf: every sample is identical to every other (all distances are 0)")
    ranks = _initial_ranks(d, idx, row_max, k1)
    Xc = X.cpu()
    V_csr = _encode(ranks, k1, k2, lambda r, c: pair_sq_dist(Xc, r, c) / row_max[r])

    # |q|^2 + |g|^2 - 2 q.g about the mean of all samples: translation changes no distance, and
    # about the mean each norm is at most 4 x the row maximum, so the cancellation error stays
    # ~1e-15 of the normalised distance even for features far from the origin (offset 1e6 etc.).
    mean = X.double().mean(0)
    q64 = X[:num_q].double() - mean
    qn = (q64 * q64).sum(1, keepdim=True)
    g64 = X[g0:g1].double() - mean
    gn = (g64 * g64).sum(1)[None, :]
    m_dev = row_max.to(device)

    def original_tile(a, b):
        sq = torch.addmm(qn[a:b] + gn, q64[a:b], g64.t(), beta=1, alpha=-2)
        return sq / m_dev[a:b, None]

    out = torch.empty(num_q, g1 - g0, dtype=torch.float32, device=device)
    rows = tile_rows or max(1, min(num_q, (32 << 20) // max(1, 8 * (g1 - g0))))
    _jaccard_dense_tiles(V_csr, (0, num_q), (g0, g1), N, original_tile, lambda_value, out,
                         progress, rows)
    return out


# ---- distance-matrix form -----------------------------------------------------------------------

def k_reciprocal_from_distances(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3, *,
                                square=True, progress=None, tile_rows=None):
    """k-reciprocal re-ranking from precomputed distances, in the form of torchreid's
    ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)``.

    As the published distance-matrix code does, the given distances are squared first
    (``square=True``; pass ``square=False`` when they already are the distances to use), the
    [N, N] matrix [[q_q, q_g], [q_g^T, g_g]] is normalised by each column's maximum and transposed,
    and the rest is :func:`k_reciprocal`'s sparse pipeline (the inputs already hold O(N^2) numbers;
    nothing else of that size is made).

    Args:
        q_g_dist: [Q, G]; q_q_dist: [Q, Q]; g_g_dist: [G, G] distances (tensors or arrays).
        k1, k2, lambda_value, progress, tile_rows: as in :func:`k_reciprocal`.

    Returns:
        [Q, G] float32 re-ranked distance (on q_g_dist's device).

    Raises:
        ValueError: shapes that disagree, NaN/inf, devices that differ, meta tensors, and the
            parameter errors of :func:`k_reciprocal`.
        TypeError: non-numeric distances, and the parameter errors of :func:`k_reciprocal`.

    Scale: as the result is scale-free, any finite distances are accepted (rescaled by a power of
    two before squaring).
    """
    q_g = V.floating(V.as_tensor(q_g_dist, "q_g_dist"), "q_g_dist")
    q_q = V.floating(V.as_tensor(q_q_dist, "q_q_dist"), "q_q_dist")
    g_g = V.floating(V.as_tensor(g_g_dist, "g_g_dist"), "g_g_dist")
    V.check_ndim(q_g, 2, "q_g_dist", "[num_query, num_gallery]")
    num_q, num_g = q_g.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"q_g_dist must be non-empty, got shape {tuple(q_g.shape)}")
    if tuple(q_q.shape) != (num_q, num_q):
        raise ValueError(f"q_q_dist must be [num_query, num_query] = [{num_q}, {num_q}], got "
                         f"{tuple(q_q.shape)}")
    if tuple(g_g.shape) != (num_g, num_g):
        raise ValueError(f"g_g_dist must be [num_gallery, num_gallery] = [{num_g}, {num_g}], got "
                         f"{tuple(g_g.shape)}")
    V.check_same_device((("q_g_dist", q_g), ("q_q_dist", q_q), ("g_g_dist", g_g)))
    _check_values(("q_g_dist", q_g), ("q_q_dist", q_q), ("g_g_dist", g_g))
    tile_rows = V.check_tile_rows(tile_rows)
    k1, k2 = _check_params(k1, k2, lambda_value, num_q + num_g)
    lambda_value = float(lambda_value)
    device = q_g.device
    q_g, q_q, g_g = (t.double().cpu() for t in (q_g, q_q, g_g))
    # scale-free (columns are normalised by their maximum): a power of two keeps the squares finite
    q_g, q_q, g_g = _rescaled(V.max_abs(q_g, q_q, g_g), q_g, q_q, g_g)
    if square:
        q_g, q_q, g_g = q_g * q_g, q_q * q_q, g_g * g_g
    N = num_q + num_g
    if progress is None:
        progress = N >= _PROGRESS_MIN_N

    def rows_block(s, e):
        """Rows [s, e) of D^T, D = [[q_q, q_g], [q_g^T, g_g]]."""
        parts = []
        if s < num_q:
            a, b = s, min(e, num_q)
            parts.append(torch.cat([q_q[:, a:b].t(), q_g[a:b]], 1))
        if e > num_q:
            a, b = max(s, num_q) - num_q, e - num_q
            parts.append(torch.cat([q_g[:, a:b].t(), g_g[:, a:b].t()], 1))
        return torch.cat(parts)

    k = min(k1 + 2, N)
    ds, ids, ms = [], [], []
    starts = range(0, N, 1024)
    for s in _progress(starts, progress, "re-ranking: neighbours", total=len(starts)):
        block = rows_block(s, min(s + 1024, N))
        vals, order = torch.sort(block, dim=1, stable=True)
        ds.append(vals[:, :k])
        ids.append(order[:, :k])
        ms.append(block.amax(1))
    d, idx, row_max = torch.cat(ds), torch.cat(ids), torch.cat(ms)
    if not bool((row_max > 0).all()):
        raise ValueError("q_q_dist/q_g_dist/g_g_dist: a column of the distance matrix has maximum "
                         "<= 0 (the published normalisation divides by it)")
    ranks = _initial_ranks(d, idx, row_max, k1)

    def pair_original(r, c):
        # D^T[r, c] = D[c, r]
        out = torch.empty(len(r), dtype=torch.float64)
        rq, cq = r < num_q, c < num_q
        m = cq & rq
        out[m] = q_q[c[m], r[m]]
        m = cq & ~rq
        out[m] = q_g[c[m], r[m] - num_q]
        m = ~cq & rq
        out[m] = q_g[r[m], c[m] - num_q]
        m = ~cq & ~rq
        out[m] = g_g[c[m] - num_q, r[m] - num_q]
        return out / row_max[r]

    V_csr = _encode(ranks, k1, k2, pair_original)
    out = torch.empty(num_q, num_g, dtype=torch.float32, device=device)
    rows = tile_rows or max(1, min(num_q, (32 << 20) // max(1, 8 * num_g)))
    _jaccard_dense_tiles(V_csr, (0, num_q), (num_q, N), N,
                         lambda a, b: q_g[a:b] / row_max[a:b, None], lambda_value, out,
                         progress, rows)
    return out


# ---- all-pairs Jaccard distance -----------------------------------------------------------------

def jaccard_distance(features, k1=20, k2=6, *, backend=None, progress=None, tile_rows=None):
    """Sparse all-pairs k-reciprocal Jaccard distance, ready for
    ``sklearn.cluster.DBSCAN(metric="precomputed")``.

    The Jaccard distance of the re-ranking algorithm (steps 1-7 of :func:`k_reciprocal`, every
    sample a query: squared Euclidean distance normalised by each row's maximum, k1-reciprocal
    sets with expansion, exp(-d) weights, query expansion over k2) between every pair of the N
    samples, as unsupervised domain adaptation recomputes it each epoch for DBSCAN pseudo-labels.

    Returns:
        ``scipy.sparse.csr_matrix`` [N, N] float64 holding exactly the pairs closer than 1 (the
        pairs whose expanded encodings overlap), column indices sorted, negative rounding clipped
        to 0; the diagonal is stored (0). Every absent pair is at distance 1. scikit-learn's
        DBSCAN/NearestNeighbors take CSR directly for ``metric="precomputed"`` and treat stored
        entries as the neighbour candidates, so any ``eps < 1`` gives the dense matrix's clusters.

    Args:
        features: [N, D] features (float32/float64; CPU or CUDA).
        k1, k2: as in :func:`k_reciprocal`.
        backend: neighbour-search backend (see :func:`k_reciprocal`); "reference" densifies the
            float64 reference (O(N^2) memory).
        progress: tqdm progress bars (default when N >= 20,000); the C++ neighbour search runs
            as one call (the self search, each pair's product once) and shows none.
        tile_rows: rows per Jaccard tile (positive int; default 4096).

    Raises:
        ValueError: features not 2-D or with NaN/inf, k1 < 1, k2 outside [1, k1 + 1], fewer than
            k1 + 1 samples, tile_rows < 1, a meta tensor.
        TypeError: non-int k1/k2/tile_rows, non-numeric features.
    """
    import scipy.sparse as sp

    X = _check_features(features, "features")
    V.check_not_meta(X, "features")
    tile_rows = V.check_tile_rows(tile_rows) or 4096
    k1, k2 = _check_params(k1, k2, _NO_LAMBDA, X.shape[0])
    if X.dtype != torch.float64:
        X = X.float()
    # One pass over the features for both the finiteness check and the rescaling (max |x| is
    # NaN/inf exactly when some value is); the neighbour search below is told not to re-check.
    amax = V.max_abs(X)
    if not math.isfinite(amax):
        raise ValueError("features contains NaN or inf")
    X, = _rescaled(amax, X)
    X = X.contiguous()
    N = X.shape[0]
    choice = resolve_backend("jaccard_distance", X.device, backend, supported=_SUPPORTED)
    if choice == "reference":
        if bool((X == X[:1]).all()):  # the kernels' row_max check, for the dense path
            raise ValueError("features: every sample is identical (all distances are 0)")
        dense = ref.jaccard_distance_reference(X, k1, k2).numpy()
        dense = np.maximum(dense, 0.0)
        mask = dense < 1.0
        r, c = np.nonzero(mask)
        return sp.csr_matrix((dense[mask], (r, c)), shape=(N, N))
    if progress is None:
        progress = N >= _PROGRESS_MIN_N
    k = min(k1 + 2, N)
    if choice == "cpp":
        # the self search: each pair's product once (reidkern.ops.knn with y is x)
        d, idx, row_max = knn(X, X, k, backend=choice, validate=False)
    else:
        d, idx, row_max = _knn_features(X, k, (0, N), choice, progress)
    if not bool((row_max > 0).all()):
        raise ValueError("features: every sample is identical (all distances are 0)")
    ranks = _initial_ranks(d, idx, row_max, k1)
    Xc = X.cpu()
    crow, cols, vals = _encode(ranks, k1, k2, lambda r, c: pair_sq_dist(Xc, r, c) / row_max[r])
    inv = _inverted_index(crow, cols, vals, 0, N, N)
    indptr, indices, data = [np.zeros(1, dtype=np.int64)], [], []
    offset = 0
    starts = range(0, N, tile_rows)
    for s in _progress(starts, progress, "jaccard", total=len(starts)):
        e = min(s + tile_rows, N)
        rc, rcols, rvals = jaccard_sum_min(*_csr_rows(crow, cols, vals, s, e), *inv, N)
        indptr.append(rc[1:].numpy() + offset)
        offset += int(rc[-1])
        indices.append(rcols.numpy())
        data.append(np.maximum(1.0 - rvals.numpy() / (2.0 - rvals.numpy()), 0.0))
    indptr = np.concatenate(indptr)
    indices = np.concatenate(indices)
    data = np.concatenate(data)
    index_dtype = np.int32 if max(len(data), N) < 2**31 else np.int64
    return sp.csr_matrix((data, indices.astype(index_dtype), indptr.astype(index_dtype)),
                         shape=(N, N))

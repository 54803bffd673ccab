"""Dense float64 reference of k-reciprocal re-ranking (Zhong et al., CVPR 2017), in NumPy.

The published algorithm step by step, on dense N x N arrays (N = Q + G), in float64 throughout:

1. original distance: squared Euclidean between all N samples; each column divided by its maximum,
   then transposed (so row i is divided by the maximum of column i; the result is asymmetric).
2. initial ranking: stable argsort of each row (neighbour ties ordered by index).
3. k-reciprocal set of i: the j among the k1+1 nearest of i that have i among their own k1+1 nearest.
4. expansion: for each j in that set, its round(k1/2)-reciprocal set R(j) (from the round(k1/2)+1
   nearest) is added when |R(j) ∩ set| > 2/3 |R(j)|; the union is made unique.
5. V[i, expanded] = exp(-original) normalised to sum 1 over the expanded set.
6. query expansion (k2 != 1): V[i] <- mean of V over the k2 nearest of i.
7. Jaccard distance 1 - s / (2 - s), s = sum_l min(V[i, l], V[j, l]), for query rows.
8. final = (1 - lambda) * Jaccard + lambda * original, on the [Q, G] block.

This is the test oracle (O(N^2) memory: small N only) and the benchmark baseline. Also here: the
published float16-storage variant (float32 distances, float16 V), which is what many users run.
"""
import numpy as np
import torch


def _np64(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def squared_euclidean_exact(x, y, block=None):
    """[M, N] float64 squared Euclidean distances sum_d (x_d - y_d)^2 (difference form: exactly 0 for
    identical rows and exactly symmetric), computed in row blocks of at most ~64 MB."""
    x, y = _np64(x), _np64(y)
    block = block or max(1, (64 << 20) // max(1, 8 * y.shape[0] * y.shape[1]))
    out = np.empty((x.shape[0], y.shape[0]), dtype=np.float64)
    for s in range(0, x.shape[0], block):
        diff = x[s:s + block, None, :] - y[None, :, :]
        out[s:s + block] = np.einsum("ijk,ijk->ij", diff, diff)
    return out


def _rerank_core(dist, num_query, k1, k2, lambda_value, all_pairs=False):
    """Steps 1-8 on the dense [N, N] (not yet normalised) distance matrix ``dist`` (float64).

    Returns the final [Q, G] distance, or with ``all_pairs`` the [N, N] Jaccard distance.
    """
    all_num = dist.shape[0]
    original = np.transpose(dist / np.max(dist, axis=0))  # step 1
    del dist
    initial_rank = np.empty((all_num, k1 + 1), dtype=np.int64)  # step 2 (only the prefix is used)
    for s in range(0, all_num, 1024):
        initial_rank[s:s + 1024] = np.argsort(original[s:s + 1024], axis=1, kind="stable")[:, :k1 + 1]
    half = int(np.around(k1 / 2.0))
    V = np.zeros((all_num, all_num), dtype=np.float64)

    def reciprocal(i, k):
        forward = initial_rank[i, :k + 1]
        backward = initial_rank[forward, :k + 1]
        return forward[np.where(backward == i)[0]]

    for i in range(all_num):
        k_reciprocal_index = reciprocal(i, k1)  # step 3
        expansion = k_reciprocal_index
        for candidate in k_reciprocal_index:  # step 4
            cand_set = reciprocal(candidate, half)
            if len(np.intersect1d(cand_set, k_reciprocal_index)) > 2.0 / 3.0 * len(cand_set):
                expansion = np.append(expansion, cand_set)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])  # step 5
        V[i, expansion] = weight / np.sum(weight)
    if k2 != 1:  # step 6
        V_qe = np.zeros_like(V)
        for i in range(all_num):
            V_qe[i] = np.mean(V[initial_rank[i, :k2]], axis=0)
        V = V_qe
        del V_qe
    inv_index = [np.where(V[:, j] != 0)[0] for j in range(all_num)]
    rows = all_num if all_pairs else num_query
    jaccard = np.zeros((rows, all_num), dtype=np.float64)
    for i in range(rows):  # step 7
        temp_min = np.zeros(all_num, dtype=np.float64)
        nonzero = np.where(V[i] != 0)[0]
        for l in nonzero:
            images = inv_index[l]
            temp_min[images] += np.minimum(V[i, l], V[images, l])
        jaccard[i] = 1.0 - temp_min / (2.0 - temp_min)
    if all_pairs:
        return jaccard
    final = jaccard * (1 - lambda_value) + original[:num_query] * lambda_value  # step 8
    return final[:, num_query:]


def k_reciprocal_reference(qf, gf, k1=20, k2=6, lambda_value=0.3, dist=None):
    """Re-ranked [Q, G] float64 distance from query features ``qf`` [Q, D] and gallery ``gf`` [G, D].

    ``dist`` optionally gives the [N, N] squared distances of cat(qf, gf) (default: the exact
    difference form, :func:`squared_euclidean_exact`)."""
    x = np.concatenate([_np64(qf), _np64(gf)], axis=0)
    if dist is None:
        dist = squared_euclidean_exact(x, x)
    out = _rerank_core(dist, len(_np64(qf)), k1, k2, lambda_value)
    return torch.from_numpy(out)


def k_reciprocal_from_distances_reference(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6,
                                          lambda_value=0.3, square=True):
    """The distance-matrix form (torchreid's ``re_ranking``): the given distances are squared
    (``square=True``, as the published code does) and assembled into the [N, N] matrix."""
    q_g, q_q, g_g = _np64(q_g_dist), _np64(q_q_dist), _np64(g_g_dist)
    dist = np.concatenate([np.concatenate([q_q, q_g], axis=1),
                           np.concatenate([q_g.T, g_g], axis=1)], axis=0)
    if square:
        dist = np.power(dist, 2)
    return torch.from_numpy(_rerank_core(dist, q_g.shape[0], k1, k2, lambda_value))


def jaccard_distance_reference(features, k1=20, k2=6):
    """Dense [N, N] float64 all-pairs Jaccard distance (steps 1-7 with every sample a query)."""
    x = _np64(features)
    return torch.from_numpy(_rerank_core(squared_euclidean_exact(x, x), len(x), k1, k2, 0.0,
                                         all_pairs=True))


def k_reciprocal_published_float16(qf, gf, k1=20, k2=6, lambda_value=0.3):
    """The widely copied feature-based variant: float32 GEMM distances, float16 V and V_qe, full
    argsort (about 21 N^2 bytes). Benchmark baseline of what users run; not exact."""
    qf = torch.as_tensor(qf).float()
    gf = torch.as_tensor(gf).float()
    query_num = qf.shape[0]
    feat = torch.cat([qf, gf])
    all_num = feat.shape[0]
    sq = feat.pow(2).sum(dim=1, keepdim=True)
    distmat = torch.addmm(sq + sq.t(), feat, feat.t(), beta=1, alpha=-2)
    original_dist = distmat.numpy()
    del feat, distmat
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float16)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    half = int(np.around(k1 / 2.0))
    for i in range(all_num):
        forward = initial_rank[i, :k1 + 1]
        backward = initial_rank[forward, :k1 + 1]
        k_reciprocal_index = forward[np.where(backward == i)[0]]
        expansion = k_reciprocal_index
        for candidate in k_reciprocal_index:
            cf = initial_rank[candidate, :half + 1]
            cb = initial_rank[cf, :half + 1]
            cand_set = cf[np.where(cb == candidate)[0]]
            if len(np.intersect1d(cand_set, k_reciprocal_index)) > 2.0 / 3.0 * len(cand_set):
                expansion = np.append(expansion, cand_set)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    original_dist = original_dist[:query_num]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float16)
        for i in range(all_num):
            V_qe[i] = np.mean(V[initial_rank[i, :k2]], axis=0)
        V = V_qe
        del V_qe
    del initial_rank
    inv_index = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard = np.zeros_like(original_dist, dtype=np.float16)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float16)
        nonzero = np.where(V[i] != 0)[0]
        for l in nonzero:
            images = inv_index[l]
            temp_min[0, images] = temp_min[0, images] + np.minimum(V[i, l], V[images, l])
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    final = jaccard * (1 - lambda_value) + original_dist * lambda_value
    return torch.from_numpy(final[:, query_num:].astype(np.float32))

"""Ops of the sparse steps of k-reciprocal re-ranking (Zhong et al., CVPR 2017), CPU C++ only
(csrc/cpu/k_reciprocal.cpp); the public functions are in :mod:`reidkern.rerank`.

* ``reidkern::k_reciprocal_expand(ranks, k1) -> (crow, cols)``: expanded k-reciprocal set of
  every sample (sorted unique columns, CSR) from the initial ranking ``ranks`` [N, >= k1+1].
* ``reidkern::sparse_rows_mean(crow, cols, vals, ranks, k2) -> (crow, cols, vals)``: query
  expansion, row i <- mean of rows ``ranks[i, :k2]``.
* ``reidkern::jaccard_sum_min(crow, cols, vals, t_ptr, t_rows, t_vals, num_targets)``: sparse
  sum_l min(V[i, l], T[j, l]) via the inverted index (t_ptr, t_rows, t_vals) of T.
* ``reidkern::jaccard_rerank(crow, cols, vals, t_ptr, t_rows, t_vals, original, lambda_value)``:
  the same sums for a tile of rows fused with ``(1 - lambda) (1 - s / (2 - s)) + lambda original``
  into a dense float32 [R, T] tile (``original`` float64 [R, T]).
* ``reidkern::pair_sq_dist(x, rows, cols)``: exact float64 squared Euclidean distance (difference
  form) of the listed pairs of rows of ``x``.

CSR pieces: crow int64 [R+1], cols int64 [nnz], vals float64 [nnz].
"""
import torch

from reidkern._library import native_available

if native_available():
    @torch.library.register_fake("reidkern::k_reciprocal_expand")
    def _(ranks, k1):
        nnz = torch.library.get_ctx().new_dynamic_size()
        return (ranks.new_empty((ranks.shape[0] + 1,), dtype=torch.int64),
                ranks.new_empty((nnz,), dtype=torch.int64))

    @torch.library.register_fake("reidkern::sparse_rows_mean")
    def _(crow, cols, vals, ranks, k2):
        nnz = torch.library.get_ctx().new_dynamic_size()
        return (crow.new_empty(crow.shape), cols.new_empty((nnz,)), vals.new_empty((nnz,)))

    @torch.library.register_fake("reidkern::jaccard_sum_min")
    def _(crow, cols, vals, t_ptr, t_rows, t_vals, num_targets):
        nnz = torch.library.get_ctx().new_dynamic_size()
        return (crow.new_empty(crow.shape), cols.new_empty((nnz,)), vals.new_empty((nnz,)))

    @torch.library.register_fake("reidkern::jaccard_rerank")
    def _(crow, cols, vals, t_ptr, t_rows, t_vals, original, lambda_value):
        return original.new_empty(original.shape, dtype=torch.float32)

    @torch.library.register_fake("reidkern::pair_sq_dist")
    def _(x, rows, cols):
        return x.new_empty(rows.shape, dtype=torch.float64)


def _cpu(*ts):
    return tuple(t.cpu().contiguous() for t in ts)


def k_reciprocal_expand(ranks, k1):
    return torch.ops.reidkern.k_reciprocal_expand(*_cpu(ranks.long()), int(k1))


def sparse_rows_mean(crow, cols, vals, ranks, k2):
    return torch.ops.reidkern.sparse_rows_mean(*_cpu(crow, cols, vals.double(), ranks.long()), int(k2))


def jaccard_sum_min(crow, cols, vals, t_ptr, t_rows, t_vals, num_targets):
    return torch.ops.reidkern.jaccard_sum_min(*_cpu(crow, cols, vals.double(), t_ptr, t_rows,
                                                    t_vals.double()), int(num_targets))


def jaccard_rerank(crow, cols, vals, t_ptr, t_rows, t_vals, original, lambda_value):
    return torch.ops.reidkern.jaccard_rerank(*_cpu(crow, cols, vals.double(), t_ptr, t_rows,
                                                   t_vals.double(), original.double()),
                                             float(lambda_value))


def pair_sq_dist(x, rows, cols):
    if x.dtype not in (torch.float32, torch.float64):
        x = x.double()
    return torch.ops.reidkern.pair_sq_dist(*_cpu(x, rows.long(), cols.long()))

"""Ops of the sparse steps of k-reciprocal re-ranking (Zhong et al., CVPR 2017), CPU C++ only
(csrc/cpu/k_reciprocal.cpp); the public functions are in :mod:`reidkern.rerank`.

* ``reidkern::k_reciprocal_expand(ranks, k1) -> (crow, cols)``: expanded k-reciprocal set of
  every sample (sorted unique columns, CSR) from the initial ranking ``ranks`` [N, >= k1+1].
* ``reidkern::sparse_rows_mean(crow, cols, vals, ranks, k2) -> (crow, cols, vals)``: query
  expansion, row i <- mean of rows ``ranks[i, :k2]``.
* ``reidkern::jaccard_sum_min(crow, cols, vals, t_ptr, t_rows, t_vals, num_targets)``: sparse
  sum_l min(V[i, l], T[j, l]) via the inverted index (t_ptr, t_rows, t_vals) of T.

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


def _cpu(*ts):
    return tuple(t.cpu().contiguous() for t in ts)


def k_reciprocal_expand(ranks, k1):
    return torch.ops.reidkern.k_reciprocal_expand(*_cpu(ranks.long()), int(k1))


def sparse_rows_mean(crow, cols, vals, ranks, k2):
    return torch.ops.reidkern.sparse_rows_mean(*_cpu(crow, cols, vals.double(), ranks.long()), int(k2))


def jaccard_sum_min(crow, cols, vals, t_ptr, t_rows, t_vals, num_targets):
    return torch.ops.reidkern.jaccard_sum_min(*_cpu(crow, cols, vals.double(), t_ptr, t_rows,
                                                    t_vals.double()), int(num_targets))

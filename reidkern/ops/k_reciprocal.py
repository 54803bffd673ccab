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
    """The tensors as contiguous CPU tensors (these ops are CPU-only)."""
    return tuple(t.cpu().contiguous() for t in ts)


def k_reciprocal_expand(ranks, k1):
    """Expanded k-reciprocal neighbour set R*(i, k1) of every sample (Zhong et al., Eq. 6–7).

    Args:
        ranks: [N, >= k1 + 1] integer initial ranking (row i: the sample indices by increasing
            distance to i, i itself first), any device (copied to the CPU, int64).
        k1: neighbourhood size (>= 1).

    Returns:
        ``(crow, cols)``: CSR pattern over N rows, crow int64 [N + 1], cols int64 [nnz] (each row's
        set as sorted unique sample indices), on the CPU.

    Raises:
        RuntimeError: from the C++ checks (ranks not 2-D or narrower than k1 + 1); the public
        :func:`reidkern.rerank.k_reciprocal` validates its arguments first (ValueError).
    """
    return torch.ops.reidkern.k_reciprocal_expand(*_cpu(ranks.long()), int(k1))


def sparse_rows_mean(crow, cols, vals, ranks, k2):
    """Local query expansion (Zhong et al., Eq. 11): row i of V becomes the mean of the rows
    ``ranks[i, :k2]`` of V.

    Args:
        crow, cols, vals: V in CSR form, int64 [N + 1], int64 [nnz], float (taken as float64) [nnz].
        ranks: [N, >= k2] integer initial ranking (as for :func:`k_reciprocal_expand`).
        k2: rows averaged per sample (>= 1).

    Returns:
        ``(crow, cols, vals)`` of the expanded V: int64, int64, float64, on the CPU.
    """
    return torch.ops.reidkern.sparse_rows_mean(*_cpu(crow, cols, vals.double(), ranks.long()), int(k2))


def jaccard_sum_min(crow, cols, vals, t_ptr, t_rows, t_vals, num_targets):
    """Sparse s[i, j] = Σ_l min(V[i, l], T[j, l]) (the numerator of the Jaccard distance, Eq. 10).

    Args:
        crow, cols, vals: the rows of V in CSR form (int64, int64, float64 [nnz]).
        t_ptr, t_rows, t_vals: T's inverted index, column l of V's index space -> the target rows
            j with T[j, l] != 0 and their values: t_ptr int64 [num_cols + 1], t_rows int64, t_vals
            float64.
        num_targets: the number of target rows of T.

    Returns:
        ``(crow, cols, vals)`` of s in CSR form over V's rows (only s > 0 stored), on the CPU.
    """
    return torch.ops.reidkern.jaccard_sum_min(*_cpu(crow, cols, vals.double(), t_ptr, t_rows,
                                                    t_vals.double()), int(num_targets))


def jaccard_rerank(crow, cols, vals, t_ptr, t_rows, t_vals, original, lambda_value):
    """A dense tile of the final re-ranked distance (Zhong et al., Eq. 12):
    ``(1 − λ) (1 − s / (2 − s)) + λ · original`` with s from :func:`jaccard_sum_min`, fused.

    Args:
        crow, cols, vals, t_ptr, t_rows, t_vals: as for :func:`jaccard_sum_min`.
        original: [R, T] original distances of the tile (taken as float64).
        lambda_value: λ in [0, 1].

    Returns:
        float32 [R, T] tile on the CPU.
    """
    return torch.ops.reidkern.jaccard_rerank(*_cpu(crow, cols, vals.double(), t_ptr, t_rows,
                                                   t_vals.double(), original.double()),
                                             float(lambda_value))


def pair_sq_dist(x, rows, cols):
    """Exact float64 squared Euclidean distances Σ_d (x[rows[p], d] − x[cols[p], d])² of the listed
    pairs, in difference form (a sample's distance to itself is exactly 0).

    Args:
        x: [N, D] float features (other dtypes are taken as float64).
        rows, cols: [P] integer row indices into x.

    Returns:
        float64 [P] on the CPU.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.double()
    return torch.ops.reidkern.pair_sq_dist(*_cpu(x, rows.long(), cols.long()))

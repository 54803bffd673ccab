// Schemas of every op in the `reidkern` torch library. Kernels register themselves per device in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; fake kernels and autograd live in reidkern/ops/<op>.py.
#include "common.h"

STABLE_TORCH_LIBRARY(reidkern, m) {
  // CMC / mAP / mINP per query without a Q x G argsort (reidkern/ops/evaluate_rank.py).
  m.def(
      "evaluate_rank(Tensor distmat, Tensor q_pids, Tensor g_pids, Tensor q_camids, "
      "Tensor g_camids, bool trapezoid) -> (Tensor, Tensor, Tensor)");
  // k nearest rows of y for each row of x by exact float64 squared Euclidean distance (ties by
  // index) and each row's maximum distance over all of y (reidkern/ops/knn.py).
  m.def("knn(Tensor x, Tensor y, int k, int index_offset) -> (Tensor, Tensor, Tensor)");
  // k-reciprocal re-ranking, sparse steps (reidkern/ops/k_reciprocal.py): expanded k-reciprocal
  // sets from the initial ranking, query expansion of a CSR matrix, Jaccard sums of minima.
  m.def("k_reciprocal_expand(Tensor ranks, int k1) -> (Tensor, Tensor)");
  m.def("sparse_rows_mean(Tensor crow, Tensor cols, Tensor vals, Tensor ranks, int k2) -> "
        "(Tensor, Tensor, Tensor)");
  m.def("jaccard_sum_min(Tensor crow, Tensor cols, Tensor vals, Tensor t_ptr, Tensor t_rows, "
        "Tensor t_vals, int num_targets) -> (Tensor, Tensor, Tensor)");
  m.def("jaccard_rerank(Tensor crow, Tensor cols, Tensor vals, Tensor t_ptr, Tensor t_rows, "
        "Tensor t_vals, Tensor original, float lambda_value) -> Tensor");
  m.def("pair_sq_dist(Tensor x, Tensor rows, Tensor cols) -> Tensor");
}

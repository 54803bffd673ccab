// Schemas of every op in the `reidkern` torch library. Kernels register themselves per device in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; fake kernels and autograd live in reidkern/ops/<op>.py.
#include "common.h"

STABLE_TORCH_LIBRARY(reidkern, m) {
  // CMC / mAP / mINP per query without a Q x G argsort (reidkern/ops/evaluate_rank.py).
  m.def(
      "evaluate_rank(Tensor distmat, Tensor q_pids, Tensor g_pids, Tensor q_camids, "
      "Tensor g_camids, bool trapezoid) -> (Tensor, Tensor, Tensor)");
  // Batch-hard triplet mining: distances + hardest positive / negative per anchor in one pass, and the
  // backward over only the 2B chosen pairs (reidkern/ops/batch_hard_mining.py). metric (csrc/metric.h): 0 euclidean,
  // 1 sqeuclidean, 2 cosine; self_offset: candidate i + self_offset is anchor i itself (-1: none).
  m.def(
      "batch_hard_mining_fwd(Tensor embeddings, Tensor labels, Tensor ref_embeddings, Tensor ref_labels, "
      "int metric, int self_offset) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "batch_hard_mining_bwd(Tensor grad_dist_ap, Tensor grad_dist_an, Tensor embeddings, "
      "Tensor ref_embeddings, Tensor dist_ap, Tensor dist_an, Tensor p_index, Tensor n_index, "
      "int metric) -> (Tensor, Tensor)");
  // Template / prototype cross-attention, fused forward and backward
  // (reidkern/ops/template_attention.py).
  m.def(
      "template_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, float scale, "
      "bool return_weights) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "template_attention_bwd(Tensor grad_out, Tensor? grad_weights, Tensor? grad_mean_logit, "
      "Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, Tensor lse, float scale) "
      "-> (Tensor, Tensor, Tensor)");
  // Folded part attention, CPU only: the per-sample middle of a multi-head attention of few
  // queries over LayerNorm-ed tokens with the projections folded onto the queries
  // (reidkern/nn/attention/folded_norm.py). g: [B, M, C] folded queries, x: [B, L, C] raw tokens.
  m.def("folded_attention_fwd(Tensor g, Tensor x, float eps, float scale) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "folded_attention_bwd(Tensor grad_u, Tensor? grad_p, Tensor g, Tensor x, Tensor p, Tensor tc, "
      "Tensor mu, Tensor rstd, float scale) -> (Tensor, Tensor)");
  // Top-k token aggregation per part, fused forward and backward
  // (reidkern/ops/topk_token_aggregate.py).
  m.def("topk_token_aggregate_fwd(Tensor scores, Tensor tokens, int k) -> (Tensor, Tensor, Tensor)");
  m.def(
      "topk_token_aggregate_bwd(Tensor grad_parts, Tensor? grad_selected, Tensor scores, "
      "Tensor tokens, Tensor indices) -> (Tensor, Tensor)");
  // k nearest rows of y for each row of x by exact float64 squared Euclidean distance (ties by
  // index) and each row's maximum distance over all of y (reidkern/ops/knn.py).
  m.def("knn(Tensor x, Tensor y, int k, int index_offset) -> (Tensor, Tensor, Tensor)");
  // knn of x against itself (CPU), each pair's product computed once: knn(x, x, k, 0)'s result.
  m.def("knn_self(Tensor x, int k) -> (Tensor, Tensor, Tensor)");
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

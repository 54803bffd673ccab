// Argument checks of reidkern::batch_hard_mining_fwd and _bwd, shared by the CPU and CUDA
// kernels (csrc/cpu/batch_hard_mining.cpp, csrc/cuda/batch_hard_mining.cu).
#pragma once

#include "common.h"
#include "metric.h"

namespace reidkern {

inline void check_mining_inputs(const Tensor& emb, const Tensor& labels, const Tensor& ref,
                                const Tensor& ref_labels, int64_t metric) {
  check_dim(emb, 2, "embeddings");
  check_dim(ref, 2, "ref_embeddings");
  check_floating(emb, "embeddings");
  STD_TORCH_CHECK(ref.scalar_type() == emb.scalar_type(), "ref_embeddings must have embeddings' dtype");
  STD_TORCH_CHECK(emb.size(1) == ref.size(1), "ref_embeddings must have embeddings' feature dimension");
  STD_TORCH_CHECK(emb.size(1) > 0, "embeddings must have a non-empty feature dimension");
  STD_TORCH_CHECK(labels.dim() == 1 && labels.size(0) == emb.size(0), "labels must be [B]");
  STD_TORCH_CHECK(ref_labels.dim() == 1 && ref_labels.size(0) == ref.size(0), "ref_labels must be [M]");
  check_dtype(labels, ScalarType::Long, "labels");
  check_dtype(ref_labels, ScalarType::Long, "ref_labels");
  STD_TORCH_CHECK(metric >= 0 && metric < kNumMetrics,
                  "metric must be 0 (euclidean), 1 (sqeuclidean) or 2 (cosine) (csrc/metric.h)");
}

inline void check_mining_backward_inputs(const Tensor& grad_dist_ap, const Tensor& grad_dist_an,
                                         const Tensor& embeddings, const Tensor& ref_embeddings,
                                         const Tensor& dist_ap, const Tensor& dist_an,
                                         const Tensor& p_index, const Tensor& n_index) {
  check_dim(embeddings, 2, "embeddings");
  check_dim(ref_embeddings, 2, "ref_embeddings");
  check_floating(embeddings, "embeddings");
  const int64_t B = embeddings.size(0);
  STD_TORCH_CHECK(ref_embeddings.size(1) == embeddings.size(1) &&
                      ref_embeddings.scalar_type() == embeddings.scalar_type(),
                  "ref_embeddings must match embeddings' dtype and feature dimension");
  for (const Tensor* t : {&grad_dist_ap, &grad_dist_an, &dist_ap, &dist_an, &p_index, &n_index})
    STD_TORCH_CHECK(t->dim() == 1 && t->size(0) == B, "batch_hard_mining_bwd: per-anchor tensors must be [B]");
  for (const Tensor* t : {&grad_dist_ap, &grad_dist_an, &dist_ap, &dist_an})
    STD_TORCH_CHECK(t->scalar_type() == embeddings.scalar_type(), "gradients and distances must have embeddings' dtype");
  check_dtype(p_index, ScalarType::Long, "p_index");
  check_dtype(n_index, ScalarType::Long, "n_index");
}

}  // namespace reidkern

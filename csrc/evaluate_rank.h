// Argument checks of reidkern::evaluate_rank, shared by the CPU and CUDA kernels
// (csrc/cpu/evaluate_rank.cpp, csrc/cuda/evaluate_rank.cu).
#pragma once

#include "common.h"

namespace reidkern {

inline void check_rank_inputs(const Tensor& distmat, const Tensor& q_pids, const Tensor& g_pids,
                              const Tensor& q_camids, const Tensor& g_camids) {
  check_dim(distmat, 2, "distmat");
  check_floating(distmat, "distmat");
  const int64_t Q = distmat.size(0), G = distmat.size(1);
  for (const Tensor* t : {&q_pids, &q_camids})
    STD_TORCH_CHECK(t->dim() == 1 && t->size(0) == Q, "q_pids and q_camids must be [Q]");
  for (const Tensor* t : {&g_pids, &g_camids})
    STD_TORCH_CHECK(t->dim() == 1 && t->size(0) == G, "g_pids and g_camids must be [G]");
  for (const Tensor* t : {&q_pids, &g_pids, &q_camids, &g_camids}) {
    check_dtype(*t, ScalarType::Long, "pids/camids");
    STD_TORCH_CHECK(t->is_contiguous(), "pids/camids must be contiguous");
    STD_TORCH_CHECK(t->is_cuda() == distmat.is_cuda(), "pids/camids must be on distmat's device");
  }
}

}  // namespace reidkern

// Argument checks of reidkern::knn, shared by the CPU and CUDA kernels
// (csrc/cpu/knn.cpp, csrc/cuda/knn.cu).
#pragma once

#include "common.h"

namespace reidkern {

inline void check_knn_inputs(const Tensor& x, const Tensor& y) {
  check_dim(x, 2, "x");
  check_dim(y, 2, "y");
  check_floating(x, "x");
  STD_TORCH_CHECK(x.scalar_type() == y.scalar_type(), "knn: x and y must have the same dtype");
  STD_TORCH_CHECK(x.size(1) == y.size(1), "knn: x and y must have the same feature dimension");
  STD_TORCH_CHECK(x.is_contiguous() && y.is_contiguous(), "knn: x and y must be contiguous");
}

}  // namespace reidkern

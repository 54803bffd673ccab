// BLAS GEMMs on memory a CPU kernel already holds: torch's aten::mm.out on strided views
// (from_blob) of existing buffers, called from inside a parallel_for task, where torch runs it
// single-threaded. Nothing is allocated. For products of whole tensors outside the tasks, the
// kernels call torch::stable::matmul instead (knn.cpp, batch_hard_mining.cpp).
#pragma once

#include "common.h"

#include <array>

namespace reidkern {

// A strided matrix operand: element (i, j) at data[i * rs + j * cs].
struct MatView {
  const void* data;
  int64_t rows, cols, rs, cs;
  MatView t() const { return {data, cols, rows, cs, rs}; }  // the transpose, no copy
};

// rows x cols, row-major with leading dimension ld.
inline MatView row_major(const void* data, int64_t rows, int64_t cols, int64_t ld) {
  return {data, rows, cols, ld, 1};
}

struct Blas {
  torch::stable::Device dev;
  ScalarType st;

  // c[i, j] (row stride ldc, unit column stride) = sum_k a[i, k] b[k, j]; a.cols == b.rows.
  void mm(const MatView& a, const MatView& b, void* c, int64_t ldc) const {
    Tensor A = torch::stable::from_blob(const_cast<void*>(a.data), {a.rows, a.cols}, {a.rs, a.cs},
                                        dev, st);
    Tensor Bm = torch::stable::from_blob(const_cast<void*>(b.data), {b.rows, b.cols},
                                         {b.rs, b.cs}, dev, st);
    Tensor C = torch::stable::from_blob(c, {a.rows, b.cols}, {ldc, 1}, dev, st);
    std::array<StableIValue, 3> stack{torch::stable::detail::from(A),
                                      torch::stable::detail::from(Bm),
                                      torch::stable::detail::from(C)};
    // TORCH_ERROR_CODE_CHECK, not STABLE_TORCH_ERROR_CODE_CHECK: the latter is new in torch 2.12
    TORCH_ERROR_CODE_CHECK(
        torch_call_dispatcher("aten::mm", "out", stack.data(), TORCH_ABI_VERSION));
    (void)torch::stable::detail::to<Tensor>(stack[0]);  // release the returned reference
  }
};

}  // namespace reidkern

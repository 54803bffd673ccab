// Shared helpers for reidkern's stable-ABI kernels: includes, argument checks, dtype dispatch.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <cstdint>

namespace reidkern {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

// Arguments are validated in Python first (ValueError naming the argument); these checks guard the
// C++ entry points against direct torch.ops calls and arrive in Python as RuntimeError.
inline void check_dim(const Tensor& t, int64_t dim, const char* name) {
  STD_TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got ", t.dim());
}

inline void check_dtype(const Tensor& t, ScalarType dtype, const char* name) {
  STD_TORCH_CHECK(t.scalar_type() == dtype, name, " has the wrong dtype");
}

inline void check_floating(const Tensor& t, const char* name) {
  auto st = t.scalar_type();
  STD_TORCH_CHECK(st == ScalarType::Float || st == ScalarType::Double, name,
                  " must be float32 or float64");
}

}  // namespace reidkern

// Calls BODY with `scalar_t` bound to float or double, following TENSOR's dtype.
#define REIDKERN_DISPATCH_FLOATING(TENSOR, NAME, ...)                      \
  [&] {                                                                   \
    if ((TENSOR).scalar_type() == torch::headeronly::ScalarType::Double) { \
      using scalar_t = double;                                            \
      return __VA_ARGS__();                                               \
    } else if ((TENSOR).scalar_type() ==                                  \
               torch::headeronly::ScalarType::Float) {                    \
      using scalar_t = float;                                             \
      return __VA_ARGS__();                                               \
    }                                                                     \
    STD_TORCH_CHECK(false, NAME, ": unsupported dtype");                  \
  }()

// Helpers shared by reidkern's CUDA kernels: torch's current stream, the launch check, warp
// reductions. Include after the op's own header (which brings common.h).
#pragma once

#include "common.h"

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include <cuda_runtime.h>

namespace reidkern {

// The current CUDA stream of `t`'s device: kernels launched on it are ordered with torch's work.
inline cudaStream_t current_stream(const Tensor& t, const char* op) {
  void* stream_ptr = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream_ptr) == 0, op,
                  ": could not get the current CUDA stream");
  return static_cast<cudaStream_t>(stream_ptr);
}

// Fails (RuntimeError in Python) when the last kernel launch did: bad configuration, no device.
inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  STD_TORCH_CHECK(err == cudaSuccess, what, " kernel launch failed: ", cudaGetErrorString(err));
}

// Sum / max over the 32 lanes of a warp (butterfly: every lane gets the result).
template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename T>
__device__ __forceinline__ T warp_max(T x) {
  for (int o = 16; o > 0; o >>= 1) x = max(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

}  // namespace reidkern

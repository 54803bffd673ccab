// pybind11 side of reidkern._C: the facts of this build, read by reidkern.build_info().
// Ops are not exposed here; they are registered with the torch library (registration.cpp).
//
// torch <= 2.11 ships a pybind11 copy in its include folder (searched first) that refuses to be
// included while TORCH_TARGET_VERSION is defined. This file uses pybind11 for the Python module
// only, never torch's own bindings, so the macro is lifted around that one include.
#pragma push_macro("TORCH_TARGET_VERSION")
#undef TORCH_TARGET_VERSION
#include <pybind11/pybind11.h>
#pragma pop_macro("TORCH_TARGET_VERSION")

#include <torch/csrc/stable/ops.h>

#ifndef REIDKERN_CUDA_ARCHS
#define REIDKERN_CUDA_ARCHS ""
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "reidkern native library: op registrations and build facts";
  py::dict info;
  info["torch_version"] = REIDKERN_TORCH_VERSION;
  info["compiler"] = REIDKERN_CXX_COMPILER;
  info["cxx_standard"] = __cplusplus;
#ifdef REIDKERN_WITH_CUDA
  info["with_cuda"] = true;
  info["cuda_archs"] = REIDKERN_CUDA_ARCHS;
#else
  info["with_cuda"] = false;
  info["cuda_archs"] = "";
#endif
  m.attr("BUILD_INFO") = info;
  // Threads of torch's intra-op pool (OpenMP in torch's CPU builds), which the CPU kernels use.
  m.def("num_threads", []() { return torch::stable::get_num_threads(); });
}

// Schemas of every op in the `reidkern` torch library. Kernels register themselves per device in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; fake kernels and autograd live in reidkern/ops/<op>.py.
#include "common.h"

STABLE_TORCH_LIBRARY(reidkern, m) {
  // CMC / mAP / mINP per query without a Q x G argsort (reidkern/ops/evaluate_rank.py).
  m.def(
      "evaluate_rank(Tensor distmat, Tensor q_pids, Tensor g_pids, Tensor q_camids, "
      "Tensor g_camids, bool trapezoid) -> (Tensor, Tensor, Tensor)");
}

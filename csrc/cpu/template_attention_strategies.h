// What the CPU template_attention entry points (template_attention.cpp) share with the three
// strategies that run its (batch, head) tasks: the geometry, the argument structs, the slices one
// task works on, and the strategies themselves. One task per (b, h); a strategy runs the tasks
// [begin, end) of one parallel_for chunk. Which strategy runs is chosen from the shape
// (AttnGeom::few / ::blas, set in template_attention.cpp):
//   template_attention_few_queries.cpp  Nq <= 8 (and D <= 128 or little work): one vector lane per
//                                       query, keys-major; padded keys stay in with probability 0.
//   template_attention_blas.cpp         otherwise, with Nq * L * D >= 2^16: torch's mm (BLAS) on
//                                       views of the task's memory; padded keys get probability 0.
//   template_attention_small.cpp        small tasks: register-tiled dot-product kernels on the
//                                       compacted list of valid keys.
// Each is compiled per instruction set (cpu/simd.h). The maths (forward saves lse per query row,
// backward recomputes P from it) is described in template_attention.cpp.
#pragma once

#include "common.h"
#include "cpu/blas.h"

#include <limits>

namespace reidkern {
namespace attn {

// Strides of a [B, H, rows, D] tensor whose head dimension D has unit stride.
struct HeadStrides {
  int64_t batch, head, row;
};

struct AttnGeom {
  int64_t B, H, Nq, L, D;
  bool q_bcast;  // q has batch 1, broadcast over B
  bool few;      // Nq <= 8: keys-major kernels with one vector lane per query
  bool blas;     // per-(b, h) GEMMs through torch's mm (BLAS) instead of the inline micro-kernels
  HeadStrides q, k, v;
};

// Nq up to which the few-query kernels run.
constexpr int64_t kFewQueries = 8;
// Above this head dim (and with enough work for BLAS) BLAS's GEMMs measured faster (LGUR PGU,
// D = 512); below it the few-query kernels are 1.3-2x faster than BLAS and the dot-product kernels.
constexpr int64_t kFewMaxD = 128;
// Per (b, h) work above which the GEMMs go through BLAS (below, its call overhead dominates).
constexpr int64_t kBlasMinMacs = int64_t(1) << 16;

template <typename T>
struct AttnFwdArgs {
  using scalar = T;
  static constexpr bool forward = true;
  const T *q, *k, *v;  // q [B or 1, H, Nq, D], k and v [B, H, L, D] (strides in AttnGeom)
  const bool* mask;    // [B, L], true = padding; nullptr: no padding
  T scale;
  T* out;      // [B, H, Nq, D] contiguous
  T* lse;      // [B, H, Nq] log-sum-exp of the scaled logits (-inf: no valid key)
  T* mean;     // [B, H, Nq] mean scaled logit over the valid keys
  T* weights;  // [B, H, Nq, L] or nullptr when not asked for
};

template <typename T>
struct AttnBwdArgs {
  using scalar = T;
  static constexpr bool forward = false;
  const T* grad_out;      // [B, H, Nq, D] contiguous
  const T* grad_weights;  // [B, H, Nq, L] contiguous or nullptr
  const T* grad_mean;     // [B, H, Nq] or nullptr
  const T *q, *k, *v;
  const bool* mask;
  T scale;
  const T* lse;  // from the forward
  T* dq;         // [B, H, Nq, D] contiguous, per (b, h): the caller sums it when q was broadcast
  T *dk, *dv;    // k's and v's layout
  HeadStrides dk_s, dv_s;
};

// The slices of task bh = b * H + h.
template <typename T>
struct FwdSlice {
  int64_t b;
  const T *q, *k, *v;  // rows of stride g.q.row, g.k.row, g.v.row
  const bool* pad;     // [L] or nullptr
  T* out;              // [Nq, D]
};
template <typename T>
struct BwdSlice {
  int64_t b;
  const T *q, *k, *v, *grad_out;
  const bool* pad;
  T *dq, *dk, *dv;  // dq [Nq, D]; dk, dv rows of stride dk_s.row, dv_s.row
};

template <typename T>
inline FwdSlice<T> fwd_slice(const AttnGeom& g, const AttnFwdArgs<T>& a, int64_t bh) {
  const int64_t b = bh / g.H, h = bh % g.H;
  return {b,
          a.q + (g.q_bcast ? 0 : b) * g.q.batch + h * g.q.head,
          a.k + b * g.k.batch + h * g.k.head,
          a.v + b * g.v.batch + h * g.v.head,
          a.mask ? a.mask + b * g.L : nullptr,
          a.out + bh * g.Nq * g.D};
}
template <typename T>
inline BwdSlice<T> bwd_slice(const AttnGeom& g, const AttnBwdArgs<T>& a, int64_t bh) {
  const int64_t b = bh / g.H, h = bh % g.H;
  return {b,
          a.q + (g.q_bcast ? 0 : b) * g.q.batch + h * g.q.head,
          a.k + b * g.k.batch + h * g.k.head,
          a.v + b * g.v.batch + h * g.v.head,
          a.grad_out + bh * g.Nq * g.D,
          a.mask ? a.mask + b * g.L : nullptr,
          a.dq + bh * g.Nq * g.D,
          a.dk + b * a.dk_s.batch + h * a.dk_s.head,
          a.dv + b * a.dv_s.batch + h * a.dv_s.head};
}

// Number of valid (non-padded) keys.
inline int64_t count_valid(const bool* pad, int64_t L) {
  if (pad == nullptr) return L;
  int64_t nv = 0;
  for (int64_t j = 0; j < L; ++j) nv += pad[j] ? 0 : 1;
  return nv;
}

// Forward of a task with no valid key: zero output, weights and mean logit, lse = -inf.
template <typename T>
inline void fwd_no_keys(const AttnGeom& g, const AttnFwdArgs<T>& a, int64_t bh, T* out) {
  for (int64_t t = 0; t < g.Nq * g.D; ++t) out[t] = T(0);
  for (int64_t i = 0; i < g.Nq; ++i) {
    a.lse[bh * g.Nq + i] = -std::numeric_limits<T>::infinity();
    a.mean[bh * g.Nq + i] = T(0);
  }
  if (a.weights)
    for (int64_t t = 0; t < g.Nq * g.L; ++t) a.weights[bh * g.Nq * g.L + t] = T(0);
}

// Backward of a task with no valid key: zero dq, dk and dv.
template <typename T>
inline void bwd_no_keys(const AttnGeom& g, const AttnBwdArgs<T>& a, const BwdSlice<T>& s) {
  for (int64_t t = 0; t < g.Nq * g.D; ++t) s.dq[t] = T(0);
  for (int64_t j = 0; j < g.L; ++j)
    for (int64_t d = 0; d < g.D; ++d) s.dk[j * a.dk_s.row + d] = s.dv[j * a.dv_s.row + d] = T(0);
}

// The strategies: STRATEGY(g, a, blas, begin, end) runs the tasks [begin, end) forward (a is an
// AttnFwdArgs<T>) or backward (an AttnBwdArgs<T>); blas is used by blas_gemms only. Each file
// defines its own with REIDKERN_ATTN_STRATEGY.
template <typename A>
void few_queries(const AttnGeom& g, const A& a, const Blas& blas, int64_t begin, int64_t end);
template <typename A>
void blas_gemms(const AttnGeom& g, const A& a, const Blas& blas, int64_t begin, int64_t end);
template <typename A>
void small_tasks(const AttnGeom& g, const A& a, const Blas& blas, int64_t begin, int64_t end);

// REIDKERN_ATTN_STRATEGY(NAME, RANGE), in a strategy's file after its anonymous namespace:
// defines the strategy NAME above as RANGE<T, VB>(g, a, blas, begin, end) (a template on the
// argument struct A, taking its arguments by value) compiled per instruction set and picked from
// the CPU's features (REIDKERN_ISA_CLONES, cpu/simd.h), for both directions in float and double.
#define REIDKERN_ATTN_STRATEGY(NAME, RANGE)                                                    \
  REIDKERN_ISA_CLONES(NAME##_isa, RANGE)                                                       \
  template <typename A>                                                                        \
  void NAME(const AttnGeom& g, const A& a, const Blas& blas, int64_t begin, int64_t end) {     \
    NAME##_isa<typename A::scalar>(g, a, blas, begin, end);                                    \
  }                                                                                            \
  template void NAME(const AttnGeom&, const AttnFwdArgs<float>&, const Blas&, int64_t, int64_t); \
  template void NAME(const AttnGeom&, const AttnFwdArgs<double>&, const Blas&, int64_t,         \
                     int64_t);                                                                 \
  template void NAME(const AttnGeom&, const AttnBwdArgs<float>&, const Blas&, int64_t, int64_t); \
  template void NAME(const AttnGeom&, const AttnBwdArgs<double>&, const Blas&, int64_t, int64_t);

}  // namespace attn
}  // namespace reidkern

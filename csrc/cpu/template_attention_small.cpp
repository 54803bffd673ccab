// template_attention CPU strategy for small tasks (neither few queries nor enough work for BLAS):
// register-tiled dot-product kernels (cpu/small_gemm.h) on the compacted list of the valid keys,
// so padded keys cost nothing.
#include "cpu/simd.h"
#include "cpu/small_gemm.h"
#include "cpu/template_attention_strategies.h"

#include <cmath>
#include <limits>
#include <vector>

namespace reidkern {
namespace attn {
namespace {

// Valid (non-padded) key indices into keys; returns their number.
inline int64_t valid_keys(const bool* pad, int64_t L, int32_t* keys) {
  int64_t n = 0;
  if (pad == nullptr) {
    for (int64_t j = 0; j < L; ++j) keys[j] = static_cast<int32_t>(j);
    return L;
  }
  for (int64_t j = 0; j < L; ++j)
    if (!pad[j]) keys[n++] = static_cast<int32_t>(j);
  return n;
}

// Forward of one (b, h); S: [Nq, L] scratch, keys: [L] scratch.
template <typename T, int VB>
REIDKERN_INLINE void fwd_task(const AttnGeom& g, const AttnFwdArgs<T>& a, int64_t bh,
                              std::vector<T>& S, std::vector<int32_t>& keys) {
  const int64_t Nq = g.Nq, L = g.L, D = g.D;
  const FwdSlice<T> x = fwd_slice(g, a, bh);
  const int64_t nv = valid_keys(x.pad, L, keys.data());
  if (nv == 0) return fwd_no_keys(g, a, bh, x.out);
  T* s = S.data();
  const int32_t* kv = keys.data();
  // S[i, jj] = scale * q_i . k_keys[jj]
  vec::gemm_nt<T, VB>(Nq, nv, D, a.scale, {x.q, g.q.row}, {x.k, g.k.row, kv}, {s, nv});
  for (int64_t i = 0; i < Nq; ++i) {
    T* row = s + i * nv;
    T mx = row[0], sum_logit = T(0);
    for (int64_t jj = 0; jj < nv; ++jj) {
      mx = row[jj] > mx ? row[jj] : mx;
      sum_logit += row[jj];
    }
    const T denom = vec::exp_sub_sum<T, VB>(row, nv, mx);  // row <- exp(row - mx)
    const T inv = T(1) / denom;
    for (int64_t jj = 0; jj < nv; ++jj) row[jj] *= inv;
    a.lse[bh * Nq + i] = mx + std::log(denom);
    a.mean[bh * Nq + i] = sum_logit / T(nv);
    if (a.weights) {
      T* w = a.weights + (bh * Nq + i) * L;
      if (nv != L)
        for (int64_t j = 0; j < L; ++j) w[j] = T(0);
      for (int64_t jj = 0; jj < nv; ++jj) w[keys[jj]] = row[jj];
    }
  }
  // O = P V
  vec::gemm_nn_stream<T, VB>(Nq, D, nv, T(1), {s, nv, 1}, {x.v, g.v.row, kv}, {x.out, D});
}

// Backward of one (b, h); P, dS: [Nq, L] scratch, keys: [L] scratch.
template <typename T, int VB>
REIDKERN_INLINE void bwd_task(const AttnGeom& g, const AttnBwdArgs<T>& a, int64_t bh,
                              std::vector<T>& P, std::vector<T>& dS, std::vector<int32_t>& keys) {
  const int64_t Nq = g.Nq, L = g.L, D = g.D;
  const BwdSlice<T> x = bwd_slice(g, a, bh);
  const int64_t nv = valid_keys(x.pad, L, keys.data());
  if (nv == 0) return bwd_no_keys(g, a, x);
  if (nv != L) {  // padded keys get zero gradients
    for (int64_t j = 0; j < L; ++j) {
      for (int64_t d = 0; d < D; ++d) x.dk[j * a.dk_s.row + d] = T(0);
      for (int64_t d = 0; d < D; ++d) x.dv[j * a.dv_s.row + d] = T(0);
    }
  }
  const T scale = a.scale;
  T* p = P.data();
  T* ds = dS.data();
  const int32_t* kv = keys.data();
  vec::gemm_nt<T, VB>(Nq, nv, D, scale, {x.q, g.q.row}, {x.k, g.k.row, kv}, {p, nv});
  vec::gemm_nt<T, VB>(Nq, nv, D, T(1), {x.grad_out, D}, {x.v, g.v.row, kv}, {ds, nv});  // dP
  for (int64_t i = 0; i < Nq; ++i) {
    T* prow = p + i * nv;
    T* drow = ds + i * nv;
    const T l = a.lse[bh * Nq + i];
    if (l == -std::numeric_limits<T>::infinity()) {  // cannot happen with nv > 0; kept for safety
      for (int64_t jj = 0; jj < nv; ++jj) prow[jj] = drow[jj] = T(0);
      continue;
    }
    vec::exp_sub_sum<T, VB>(prow, nv, l);  // prow <- exp(S - lse)
    if (a.grad_weights) {
      const T* gwr = a.grad_weights + (bh * Nq + i) * L;
      for (int64_t jj = 0; jj < nv; ++jj) drow[jj] += gwr[keys[jj]];
    }
    T delta = T(0);
    for (int64_t jj = 0; jj < nv; ++jj) delta += prow[jj] * drow[jj];
    const T gm = a.grad_mean ? a.grad_mean[bh * Nq + i] / T(nv) : T(0);
    for (int64_t jj = 0; jj < nv; ++jj) drow[jj] = prow[jj] * (drow[jj] - delta) + gm;
  }
  // dQ = scale dS K ; dK = scale dS^T Q ; dV = P^T dO
  vec::gemm_nn_stream<T, VB>(Nq, D, nv, scale, {ds, nv, 1}, {x.k, g.k.row, kv}, {x.dq, D});
  vec::gemm_nn<T, VB>(nv, D, Nq, scale, {ds, 1, nv}, {x.q, g.q.row, nullptr},
                      {x.dk, a.dk_s.row, kv});
  vec::gemm_nn<T, VB>(nv, D, Nq, T(1), {p, 1, nv}, {x.grad_out, D, nullptr},
                      {x.dv, a.dv_s.row, kv});
}

template <typename T, int VB, typename A>
REIDKERN_INLINE void range(AttnGeom g, A a, Blas, int64_t begin, int64_t end) {
  std::vector<int32_t> keys(g.L);
  if constexpr (A::forward) {
    std::vector<T> S(g.Nq * g.L);
    for (int64_t bh = begin; bh < end; ++bh) fwd_task<T, VB>(g, a, bh, S, keys);
  } else {
    std::vector<T> P(g.Nq * g.L), dS(g.Nq * g.L);
    for (int64_t bh = begin; bh < end; ++bh) bwd_task<T, VB>(g, a, bh, P, dS, keys);
  }
}

}  // namespace

REIDKERN_ATTN_STRATEGY(small_tasks, range)

}  // namespace attn
}  // namespace reidkern

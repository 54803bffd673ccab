// template_attention CPU strategy for tasks with enough work (Nq * L * D >= 2^16) and more than a
// few queries or a wide head: the task's GEMMs go through torch's mm (BLAS, cpu/blas.h) on views of
// its memory, over all L keys (padded keys get probability 0); softmax and dS run on SIMD vectors.
#include "cpu/blas.h"
#include "cpu/simd.h"
#include "cpu/template_attention_strategies.h"

#include <cmath>
#include <limits>
#include <vector>

namespace reidkern {
namespace attn {
namespace {

// row[j] *= scale over n values (padded keys, when pad is given, set to -inf); returns the max and,
// through sum, the sum over the valid values.
template <typename T, int VB>
REIDKERN_INLINE T scale_max_sum(T* row, int64_t n, T scale, const bool* pad, T& sum) {
  using Vt = typename vec::V<T, VB>::type;
  constexpr int W = vec::V<T, VB>::W;
  const T ninf = -std::numeric_limits<T>::infinity();
  T mx = ninf, sm = T(0);
  int64_t j = 0;
  if (pad == nullptr) {
    Vt vmx = Vt{} + ninf, vsm = {};
    for (; j + W <= n; j += W) {
      const Vt x = vec::load<VB>(row + j) * scale;
      vec::store(row + j, x);
      vmx = x > vmx ? x : vmx;
      vsm += x;
    }
    for (int t = 0; t < W; ++t) mx = vmx[t] > mx ? vmx[t] : mx;
    sm = vec::hsum<T, Vt>(vsm);
    for (; j < n; ++j) {
      const T x = row[j] * scale;
      row[j] = x;
      mx = x > mx ? x : mx;
      sm += x;
    }
  } else {
    for (; j < n; ++j) {
      if (pad[j]) {
        row[j] = ninf;
      } else {
        const T x = row[j] * scale;
        row[j] = x;
        mx = x > mx ? x : mx;
        sm += x;
      }
    }
  }
  sum = sm;
  return mx;
}

// Forward of one (b, h); s: [Nq, L] scratch.
template <typename T, int VB>
REIDKERN_INLINE void fwd_task(const AttnGeom& g, const AttnFwdArgs<T>& a, const Blas& blas,
                              int64_t bh, T* s) {
  const int64_t Nq = g.Nq, L = g.L, D = g.D;
  const FwdSlice<T> x = fwd_slice(g, a, bh);
  const bool* pad = x.pad;
  const int64_t nv = count_valid(pad, L);
  if (nv == 0) return fwd_no_keys(g, a, bh, x.out);
  blas.mm(row_major(x.q, Nq, D, g.q.row), row_major(x.k, L, D, g.k.row).t(), s, L);  // S = Q K^T
  for (int64_t i = 0; i < Nq; ++i) {
    T* row = s + i * L;
    T sum_logit;
    const T mx = scale_max_sum<T, VB>(row, L, a.scale, pad, sum_logit);
    const T denom = vec::exp_sub_sum<T, VB>(row, L, mx);  // padded: exp(-inf) = 0
    const T inv = T(1) / denom;
    for (int64_t j = 0; j < L; ++j) row[j] *= inv;
    a.lse[bh * Nq + i] = mx + std::log(denom);
    a.mean[bh * Nq + i] = sum_logit / T(nv);
    if (a.weights) {
      T* w = a.weights + (bh * Nq + i) * L;
      for (int64_t j = 0; j < L; ++j) w[j] = row[j];
    }
  }
  blas.mm(row_major(s, Nq, L, L), row_major(x.v, L, D, g.v.row), x.out, D);  // O = P V
}

// Backward of one (b, h) (padded keys: P = dS = 0, so their dK and dV rows come out 0); p, ds:
// [Nq, L] scratch.
template <typename T, int VB>
REIDKERN_INLINE void bwd_task(const AttnGeom& g, const AttnBwdArgs<T>& a, const Blas& blas,
                              int64_t bh, T* p, T* ds) {
  const int64_t Nq = g.Nq, L = g.L, D = g.D;
  const BwdSlice<T> x = bwd_slice(g, a, bh);
  const bool* pad = x.pad;
  const int64_t nv = count_valid(pad, L);
  if (nv == 0) return bwd_no_keys(g, a, x);
  using Vt = typename vec::V<T, VB>::type;
  constexpr int W = vec::V<T, VB>::W;
  const T scale = a.scale;
  const MatView q = row_major(x.q, Nq, D, g.q.row), k = row_major(x.k, L, D, g.k.row);
  const MatView dout = row_major(x.grad_out, Nq, D, D);
  blas.mm(q, k.t(), p, L);                                     // S = Q K^T (unscaled)
  blas.mm(dout, row_major(x.v, L, D, g.v.row).t(), ds, L);     // dP = dO V^T
  for (int64_t i = 0; i < Nq; ++i) {
    T* prow = p + i * L;
    T* drow = ds + i * L;
    const T l = a.lse[bh * Nq + i];
    T unused;
    scale_max_sum<T, VB>(prow, L, scale, pad, unused);  // scaled logits, padded -> -inf
    vec::exp_sub_sum<T, VB>(prow, L, l);                // P = exp(S - lse)
    if (a.grad_weights) {
      const T* gwr = a.grad_weights + (bh * Nq + i) * L;
      for (int64_t j = 0; j < L; ++j) drow[j] += gwr[j];
    }
    T delta = T(0);
    int64_t j = 0;
    {
      Vt acc = {};
      for (; j + W <= L; j += W) acc += vec::load<VB>(prow + j) * vec::load<VB>(drow + j);
      delta = vec::hsum<T, Vt>(acc);
      for (; j < L; ++j) delta += prow[j] * drow[j];
    }
    const T gm = a.grad_mean ? a.grad_mean[bh * Nq + i] / T(nv) : T(0);
    // dS' = scale (P (dP - delta) + gm) on valid keys, 0 on padded ones
    j = 0;
    for (; j + W <= L; j += W) {
      const Vt pv = vec::load<VB>(prow + j);
      vec::store(drow + j, scale * (pv * (vec::load<VB>(drow + j) - delta) + gm));
    }
    for (; j < L; ++j) drow[j] = scale * (prow[j] * (drow[j] - delta) + gm);
    if (pad)
      for (int64_t jj = 0; jj < L; ++jj)
        if (pad[jj]) drow[jj] = T(0);
  }
  const MatView dS = row_major(ds, Nq, L, L);
  blas.mm(dS, k, x.dq, D);                                      // dQ = dS' K
  blas.mm(dS.t(), q, x.dk, a.dk_s.row);                         // dK = dS'^T Q
  blas.mm(row_major(p, Nq, L, L).t(), dout, x.dv, a.dv_s.row);  // dV = P^T dO
}

template <typename T, int VB, typename A>
REIDKERN_INLINE void range(AttnGeom g, A a, Blas blas, int64_t begin, int64_t end) {
  if constexpr (A::forward) {
    std::vector<T> S(g.Nq * g.L);
    for (int64_t bh = begin; bh < end; ++bh) fwd_task<T, VB>(g, a, blas, bh, S.data());
  } else {
    std::vector<T> P(g.Nq * g.L), dS(g.Nq * g.L);
    for (int64_t bh = begin; bh < end; ++bh) bwd_task<T, VB>(g, a, blas, bh, P.data(), dS.data());
  }
}

}  // namespace

REIDKERN_ATTN_STRATEGY(blas_gemms, range)

}  // namespace attn
}  // namespace reidkern

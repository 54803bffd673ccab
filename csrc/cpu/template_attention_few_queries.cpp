// template_attention CPU strategy for few queries (Nq <= 8): keys-major kernels with the queries
// in the lanes of one vector. Q^T (and dO^T) are packed as [D] vectors of 8 lanes, so
// S^T[j] = sum_d K[j, d] Q^T[d] is an outer-product GEMM (broadcast K, 8 keys per register tile)
// with no horizontal sums; softmax, delta and dS run on whole vectors (one lane per query); P V,
// dS K, dS^T Q and P^T dO keep the NQ query rows (or their coefficients) in registers while
// streaming the key rows once. All L keys take part; padded keys get probability 0.
#include "cpu/simd.h"
#include "cpu/template_attention_strategies.h"

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace reidkern {
namespace attn {
namespace {

template <typename T>
struct FewQ {
  static constexpr int QB = 8 * int(sizeof(T));  // bytes of an 8-lane vector
  typedef typename vec::V<T, QB>::type Qv;
};

template <typename T>
REIDKERN_INLINE typename FewQ<T>::Qv qexp(typename FewQ<T>::Qv x) {
  if constexpr (std::is_same_v<T, float>) {
    return vec::exp_f32<32>(x);
  } else {
    typename FewQ<T>::Qv y;
    for (int t = 0; t < 8; ++t) y[t] = std::exp(x[t]);
    return y;
  }
}

// P[d][i] = X[i * xs + d] for i < NQ, 0 for the other lanes.
template <typename T, int NQ>
REIDKERN_INLINE void pack_lanes(int64_t D, const T* X, int64_t xs, typename FewQ<T>::Qv* P) {
  for (int64_t d = 0; d < D; ++d) {
    typename FewQ<T>::Qv p = {};
    for (int i = 0; i < NQ; ++i) p[i] = X[i * xs + d];
    P[d] = p;
  }
}

// out[j] = sum_d X[j * xs + d] P[d]   (8 rows of X per register tile)
template <typename T>
REIDKERN_INLINE void rows_dot_packed(int64_t L, int64_t D, const T* X, int64_t xs,
                                     const typename FewQ<T>::Qv* P, typename FewQ<T>::Qv* out) {
  using Qv = typename FewQ<T>::Qv;
  int64_t j = 0;
  for (; j + 8 <= L; j += 8) {
    const T* x0 = X + j * xs;
    const T* x1 = x0 + xs;
    const T* x2 = x1 + xs;
    const T* x3 = x2 + xs;
    const T* x4 = x3 + xs;
    const T* x5 = x4 + xs;
    const T* x6 = x5 + xs;
    const T* x7 = x6 + xs;
    Qv a0 = {}, a1 = {}, a2 = {}, a3 = {}, a4 = {}, a5 = {}, a6 = {}, a7 = {};
    for (int64_t d = 0; d < D; ++d) {
      const Qv p = P[d];
      a0 += x0[d] * p; a1 += x1[d] * p; a2 += x2[d] * p; a3 += x3[d] * p;
      a4 += x4[d] * p; a5 += x5[d] * p; a6 += x6[d] * p; a7 += x7[d] * p;
    }
    out[j] = a0; out[j + 1] = a1; out[j + 2] = a2; out[j + 3] = a3;
    out[j + 4] = a4; out[j + 5] = a5; out[j + 6] = a6; out[j + 7] = a7;
  }
  for (; j < L; ++j) {
    const T* x0 = X + j * xs;
    Qv a0 = {};
    for (int64_t d = 0; d < D; ++d) a0 += x0[d] * P[d];
    out[j] = a0;
  }
}

// out[i * ldo + c] = sum_j A[j][i] X[j * xs + c] for i < NQ (P V, dS K): NQ x 2 vectors of
// accumulators per column strip.
template <typename T, int VB, int NQ>
REIDKERN_INLINE void lanes_times_rows(int64_t L, int64_t D, const typename FewQ<T>::Qv* A,
                                      const T* X, int64_t xs, T* out, int64_t ldo) {
  using Vt = typename vec::V<T, VB>::type;
  constexpr int W = vec::V<T, VB>::W;
  const T* a = reinterpret_cast<const T*>(A);  // a[j * 8 + i]
  int64_t c = 0;
  for (; c + 2 * W <= D; c += 2 * W) {
    Vt acc0[NQ], acc1[NQ];
    for (int i = 0; i < NQ; ++i) acc0[i] = acc1[i] = Vt{};
    for (int64_t j = 0; j < L; ++j) {
      const Vt x0 = vec::load<VB>(X + j * xs + c), x1 = vec::load<VB>(X + j * xs + c + W);
      for (int i = 0; i < NQ; ++i) {
        const T s = a[j * 8 + i];
        acc0[i] += s * x0;
        acc1[i] += s * x1;
      }
    }
    for (int i = 0; i < NQ; ++i) {
      vec::store(out + i * ldo + c, acc0[i]);
      vec::store(out + i * ldo + c + W, acc1[i]);
    }
  }
  for (; c + W <= D; c += W) {
    Vt acc0[NQ];
    for (int i = 0; i < NQ; ++i) acc0[i] = Vt{};
    for (int64_t j = 0; j < L; ++j) {
      const Vt x0 = vec::load<VB>(X + j * xs + c);
      for (int i = 0; i < NQ; ++i) acc0[i] += a[j * 8 + i] * x0;
    }
    for (int i = 0; i < NQ; ++i) vec::store(out + i * ldo + c, acc0[i]);
  }
  for (; c < D; ++c) {
    T acc[NQ] = {};
    for (int64_t j = 0; j < L; ++j)
      for (int i = 0; i < NQ; ++i) acc[i] += a[j * 8 + i] * X[j * xs + c];
    for (int i = 0; i < NQ; ++i) out[i * ldo + c] = acc[i];
  }
}

// out[j * ldo + c] = sum_i A[j][i] Y[i * ys + c] for all L rows (dK = dS^T Q, dV = P^T dO): the
// NQ rows of a column strip of Y stay in registers while the L output rows are written once.
template <typename T, int VB, int NQ>
REIDKERN_INLINE void lanes_t_times_rows(int64_t L, int64_t D, const typename FewQ<T>::Qv* A,
                                        const T* Y, int64_t ys, T* out, int64_t ldo) {
  using Vt = typename vec::V<T, VB>::type;
  constexpr int W = vec::V<T, VB>::W;
  const T* a = reinterpret_cast<const T*>(A);
  int64_t c = 0;
  for (; c + 2 * W <= D; c += 2 * W) {
    Vt y0[NQ], y1[NQ];
    for (int i = 0; i < NQ; ++i) {
      y0[i] = vec::load<VB>(Y + i * ys + c);
      y1[i] = vec::load<VB>(Y + i * ys + c + W);
    }
    for (int64_t j = 0; j < L; ++j) {
      Vt acc0 = {}, acc1 = {};
      for (int i = 0; i < NQ; ++i) {
        const T s = a[j * 8 + i];
        acc0 += s * y0[i];
        acc1 += s * y1[i];
      }
      vec::store(out + j * ldo + c, acc0);
      vec::store(out + j * ldo + c + W, acc1);
    }
  }
  for (; c + W <= D; c += W) {
    Vt y0[NQ];
    for (int i = 0; i < NQ; ++i) y0[i] = vec::load<VB>(Y + i * ys + c);
    for (int64_t j = 0; j < L; ++j) {
      Vt acc0 = {};
      for (int i = 0; i < NQ; ++i) acc0 += a[j * 8 + i] * y0[i];
      vec::store(out + j * ldo + c, acc0);
    }
  }
  for (; c < D; ++c)
    for (int64_t j = 0; j < L; ++j) {
      T acc = T(0);
      for (int i = 0; i < NQ; ++i) acc += a[j * 8 + i] * Y[i * ys + c];
      out[j * ldo + c] = acc;
    }
}

// Per-thread scratch of 8-lane vectors: packed Q^T and dO^T [D], S^T / P^T and dP^T / dS^T [L]
// (64-byte aligned by hand: std::vector does not see the vector types' alignment).
template <typename T>
struct FewQScratch {
  using Qv = typename FewQ<T>::Qv;
  std::vector<char> buf;
  Qv *qt, *ot, *st, *dt;
  FewQScratch(int64_t L, int64_t D) : buf(size_t(2 * (L + D)) * sizeof(Qv) + 64) {
    char* base = buf.data() + (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64;
    qt = reinterpret_cast<Qv*>(base);
    ot = qt + D;
    st = ot + D;
    dt = st + L;
  }
};

// Forward of one (b, h) for Nq = NQ <= 8, over all L keys (padded keys get probability 0).
template <typename T, int VB, int NQ>
REIDKERN_INLINE void fwd_task(const AttnGeom& g, const AttnFwdArgs<T>& a, int64_t bh,
                              FewQScratch<T>& sc) {
  using Qv = typename FewQ<T>::Qv;
  const int64_t L = g.L, D = g.D;
  const FwdSlice<T> s = fwd_slice(g, a, bh);
  const bool* pad = s.pad;
  const int64_t nv = count_valid(pad, L);
  if (nv == 0) return fwd_no_keys(g, a, bh, s.out);
  Qv* st = sc.st;
  pack_lanes<T, NQ>(D, s.q, g.q.row, sc.qt);
  rows_dot_packed<T>(L, D, s.k, g.k.row, sc.qt, st);  // S^T = K Q^T
  const T ninf = -std::numeric_limits<T>::infinity();
  Qv vmx = Qv{} + ninf, vsum = {};
  for (int64_t j = 0; j < L; ++j) {
    if (pad && pad[j]) {
      st[j] = Qv{} + ninf;
      continue;
    }
    const Qv x = st[j] * a.scale;
    st[j] = x;
    vmx = x > vmx ? x : vmx;
    vsum += x;
  }
  Qv den = {};
  for (int64_t j = 0; j < L; ++j) {
    const Qv e = qexp<T>(st[j] - vmx);  // padded: exp(-inf) = 0
    st[j] = e;
    den += e;
  }
  const Qv inv = T(1) / den;
  for (int64_t j = 0; j < L; ++j) st[j] *= inv;
  for (int i = 0; i < NQ; ++i) {
    a.lse[bh * NQ + i] = vmx[i] + std::log(den[i]);
    a.mean[bh * NQ + i] = vsum[i] / T(nv);
  }
  if (a.weights)
    for (int i = 0; i < NQ; ++i) {
      T* w = a.weights + (bh * NQ + i) * L;
      for (int64_t j = 0; j < L; ++j) w[j] = st[j][i];
    }
  lanes_times_rows<T, VB, NQ>(L, D, st, s.v, g.v.row, s.out, D);  // O = P V
}

// Backward of one (b, h) for Nq = NQ <= 8 (padded keys: P = dS = 0, so their dK, dV rows are 0).
template <typename T, int VB, int NQ>
REIDKERN_INLINE void bwd_task(const AttnGeom& g, const AttnBwdArgs<T>& a, int64_t bh,
                              FewQScratch<T>& sc) {
  using Qv = typename FewQ<T>::Qv;
  const int64_t L = g.L, D = g.D;
  const BwdSlice<T> s = bwd_slice(g, a, bh);
  const bool* pad = s.pad;
  const int64_t nv = count_valid(pad, L);
  if (nv == 0) return bwd_no_keys(g, a, s);
  const T scale = a.scale;
  Qv* st = sc.st;
  Qv* dt = sc.dt;
  pack_lanes<T, NQ>(D, s.q, g.q.row, sc.qt);
  pack_lanes<T, NQ>(D, s.grad_out, D, sc.ot);
  rows_dot_packed<T>(L, D, s.k, g.k.row, sc.qt, st);  // S^T = K Q^T
  rows_dot_packed<T>(L, D, s.v, g.v.row, sc.ot, dt);  // dP^T = V dO^T
  Qv lv = {}, gm = {};
  for (int i = 0; i < NQ; ++i) {
    lv[i] = a.lse[bh * NQ + i];
    gm[i] = a.grad_mean ? a.grad_mean[bh * NQ + i] / T(nv) : T(0);
  }
  const T* gw = a.grad_weights;
  Qv delta = {};
  for (int64_t j = 0; j < L; ++j) {
    if (pad && pad[j]) {
      st[j] = Qv{};
      continue;
    }
    const Qv p = qexp<T>(st[j] * scale - lv);  // P = exp(S - lse)
    st[j] = p;
    if (gw)
      for (int i = 0; i < NQ; ++i) dt[j][i] += gw[(bh * NQ + i) * L + j];
    delta += p * dt[j];
  }
  for (int64_t j = 0; j < L; ++j)  // dS' = scale (P (dP - delta) + gm), 0 on padded keys
    dt[j] = (pad && pad[j]) ? Qv{} : scale * (st[j] * (dt[j] - delta) + gm);
  lanes_times_rows<T, VB, NQ>(L, D, dt, s.k, g.k.row, s.dq, D);                // dQ = dS' K
  lanes_t_times_rows<T, VB, NQ>(L, D, dt, s.q, g.q.row, s.dk, a.dk_s.row);     // dK = dS'^T Q
  lanes_t_times_rows<T, VB, NQ>(L, D, st, s.grad_out, D, s.dv, a.dv_s.row);    // dV = P^T dO
}

// The tasks [begin, end) with the query count as a compile-time constant NQ = g.Nq (1 to
// kFewQueries), forward or backward as A says.
template <typename T, int VB, int NQ, typename A>
REIDKERN_INLINE void tasks_nq(const AttnGeom& g, const A& a, int64_t begin, int64_t end,
                              FewQScratch<T>& sc) {
  if constexpr (NQ <= kFewQueries) {
    if (g.Nq != NQ) return tasks_nq<T, VB, NQ + 1>(g, a, begin, end, sc);
    for (int64_t bh = begin; bh < end; ++bh) {
      if constexpr (A::forward) fwd_task<T, VB, NQ>(g, a, bh, sc);
      else bwd_task<T, VB, NQ>(g, a, bh, sc);
    }
  }
}

template <typename T, int VB, typename A>
REIDKERN_INLINE void range(AttnGeom g, A a, Blas, int64_t begin, int64_t end) {
  FewQScratch<T> sc(g.L, g.D);
  tasks_nq<T, VB, 1>(g, a, begin, end, sc);
}

}  // namespace

REIDKERN_ATTN_STRATEGY(few_queries, range)

}  // namespace attn
}  // namespace reidkern

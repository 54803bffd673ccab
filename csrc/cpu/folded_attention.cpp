// Folded part attention, CPU: the per-sample middle of reidkern/nn/attention/folded_norm.py (the
// maths is written there) as one task per sample. Given the folded queries g [B, M, C] (rows: the
// (query, head) pairs, g = W_k,hᵀ q_h) and the raw tokens x [B, L, C] (any strides; DPTI's is the
// transposed [B, C, L] ResNet map), a task computes its tokens' LayerNorm statistics, the logits,
// the softmax and U = Σ_j (p_j / σ_j)(x_j − μ_j) (forward), or the gradients of g and x (backward),
// with its GEMMs through torch's mm on views of its memory (cpu/blas.h) and every elementwise step
// fused into passes over [M, L]-sized rows that stay in cache. The gradient of x is written in x's
// own layout, and its two GEMMs (gᵀ dT and (∂U)ᵀ R) run as one with both operands stacked.
#include "common.h"
#include "cpu/blas.h"
#include "cpu/simd.h"
#include "huge_pages.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace reidkern {
namespace {

struct FoldGeom {
  int64_t B, M, L, C;
  int64_t xb, xl, xc;  // x's strides: sample, token, channel
  // x's [L, C] matrix of sample b
  MatView x_of(const void* x, int64_t b, int64_t itemsize) const {
    return {static_cast<const char*>(x) + b * xb * itemsize, L, C, xl, xc};
  }
};

template <typename T>
struct FoldFwdArgs {
  const T *g, *x;  // g [B, M, C] contiguous; x strided (FoldGeom)
  T eps, scale;
  T *u, *p, *tc;  // [B, M, C], [B, M, L], [B, M, L] (tc = σ_j S_ij, the logits before 1/σ_j)
  T *mu, *rstd;   // [B, L]
};

template <typename T>
struct FoldBwdArgs {
  const T *grad_u, *grad_p;  // [B, M, C]; [B, M, L] or nullptr
  const T *g, *x, *p, *tc, *mu, *rstd;
  T scale;
  T* grad_g;           // [B, M, C]
  T* gx;               // x's shape, strides below (x's layout: [B, C, L] or [B, L, C] memory)
  int64_t gb, gl, gc;  // gx's strides
};

// Row sums of a contiguous [M, C] matrix.
template <typename T, int VB>
REIDKERN_INLINE void row_sums(const T* a, int64_t M, int64_t C, T* out) {
  using Vt = typename vec::V<T, VB>::type;
  constexpr int W = vec::V<T, VB>::W;
  for (int64_t i = 0; i < M; ++i) {
    const T* row = a + i * C;
    Vt acc0 = {}, acc1 = {};
    int64_t c = 0;
    for (; c + 2 * W <= C; c += 2 * W) {
      acc0 += vec::load<VB>(row + c);
      acc1 += vec::load<VB>(row + c + W);
    }
    for (; c + W <= C; c += W) acc0 += vec::load<VB>(row + c);
    T s = vec::hsum<T, Vt>(acc0 + acc1);
    for (; c < C; ++c) s += row[c];
    out[i] = s;
  }
}

// μ_j and 1/σ_j over the C channels of each token of one sample's x (LayerNorm's biased variance,
// two passes). Tokens-contiguous x (the map layout) is read channel row by channel row.
template <typename T, int VB>
REIDKERN_INLINE void token_stats(const FoldGeom& G, const T* xb, T eps, T* mu, T* rstd) {
  using Vt = typename vec::V<T, VB>::type;
  constexpr int W = vec::V<T, VB>::W;
  const int64_t L = G.L, C = G.C;
  const T invC = T(1) / T(C);
  if (G.xl == 1) {
    std::fill(mu, mu + L, T(0));
    std::fill(rstd, rstd + L, T(0));
    for (int64_t c = 0; c < C; ++c) vec::axpy<T, VB>(L, T(1), xb + c * G.xc, mu);
    for (int64_t j = 0; j < L; ++j) mu[j] *= invC;
    for (int64_t c = 0; c < C; ++c) {
      const T* row = xb + c * G.xc;
      int64_t j = 0;
      for (; j + W <= L; j += W) {
        const Vt d = vec::load<VB>(row + j) - vec::load<VB>(mu + j);
        vec::store(rstd + j, vec::load<VB>(rstd + j) + d * d);
      }
      for (; j < L; ++j) rstd[j] += (row[j] - mu[j]) * (row[j] - mu[j]);
    }
  } else {
    for (int64_t j = 0; j < L; ++j) {
      const T* row = xb + j * G.xl;
      T s = T(0), v = T(0);
      for (int64_t c = 0; c < C; ++c) s += row[c * G.xc];
      const T m = s * invC;
      for (int64_t c = 0; c < C; ++c) v += (row[c * G.xc] - m) * (row[c * G.xc] - m);
      mu[j] = m;
      rstd[j] = v;
    }
  }
  for (int64_t j = 0; j < L; ++j) rstd[j] = T(1) / std::sqrt(rstd[j] * invC + eps);
}

// row[c] += s for c < n.
template <typename T, int VB>
REIDKERN_INLINE void add_scalar(T* row, int64_t n, T s) {
  constexpr int W = vec::V<T, VB>::W;
  int64_t c = 0;
  for (; c + W <= n; c += W) vec::store(row + c, vec::load<VB>(row + c) + s);
  for (; c < n; ++c) row[c] += s;
}

// Forward of samples [begin, end).
template <typename T, int VB>
REIDKERN_INLINE void fwd_range(FoldGeom G, FoldFwdArgs<T> a, Blas blas, int64_t begin, int64_t end) {
  const int64_t M = G.M, L = G.L, C = G.C;
  std::vector<T> gs(M), rm(M), r(M * L);
  for (int64_t b = begin; b < end; ++b) {
    const T* gb = a.g + b * M * C;
    T *mu = a.mu + b * L, *rstd = a.rstd + b * L;
    T *tc = a.tc + b * M * L, *p = a.p + b * M * L, *u = a.u + b * M * C;
    const MatView x = G.x_of(a.x, b, sizeof(T));
    token_stats<T, VB>(G, static_cast<const T*>(x.data), a.eps, mu, rstd);
    row_sums<T, VB>(gb, M, C, gs.data());
    blas.mm(row_major(gb, M, C, C), x.t(), tc, L);  // g xᵀ
    for (int64_t i = 0; i < M; ++i) {
      T *t = tc + i * L, *pr = p + i * L, *rr = r.data() + i * L;
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < L; ++j) {
        t[j] = (t[j] - gs[i] * mu[j]) * a.scale;  // σ_j S_ij
        pr[j] = t[j] * rstd[j];
        mx = pr[j] > mx ? pr[j] : mx;
      }
      const T inv = T(1) / vec::exp_sub_sum<T, VB>(pr, L, mx);
      T acc = T(0);
      for (int64_t j = 0; j < L; ++j) {
        pr[j] *= inv;
        rr[j] = pr[j] * rstd[j];
        acc += rr[j] * mu[j];
      }
      rm[i] = acc;
    }
    blas.mm(row_major(r.data(), M, L, L), x, u, C);  // R x, then − Σ_j r_ij μ_j
    for (int64_t i = 0; i < M; ++i) add_scalar<T, VB>(u + i * C, C, -rm[i]);
  }
}

// Backward of samples [begin, end). Scratch: gcat [2M, C] (g over ∂U), dcat [2M, L] (dT over R),
// dr [M, L], and per-row / per-token vectors.
template <typename T, int VB>
REIDKERN_INLINE void bwd_range(FoldGeom G, FoldBwdArgs<T> a, Blas blas, int64_t begin, int64_t end) {
  const int64_t M = G.M, L = G.L, C = G.C;
  std::vector<T> gcat(2 * M * C), dcat(2 * M * L), dr(M * L);
  std::vector<T> gs(M), dus(M), dtm(M), dmu(L), drs(L), aa(L), bb(L);
  T *dt = dcat.data(), *r = dcat.data() + M * L;
  for (int64_t b = begin; b < end; ++b) {
    const T *gb = a.g + b * M * C, *gu = a.grad_u + b * M * C;
    const T *mu = a.mu + b * L, *rstd = a.rstd + b * L;
    const T *tc = a.tc + b * M * L, *p = a.p + b * M * L;
    const T* gp = a.grad_p ? a.grad_p + b * M * L : nullptr;
    const MatView x = G.x_of(a.x, b, sizeof(T));
    std::memcpy(gcat.data(), gb, sizeof(T) * M * C);
    std::memcpy(gcat.data() + M * C, gu, sizeof(T) * M * C);
    row_sums<T, VB>(gb, M, C, gs.data());
    row_sums<T, VB>(gu, M, C, dus.data());
    blas.mm(row_major(gu, M, C, C), x.t(), dr.data(), L);  // ∂U xᵀ
    std::fill(dmu.begin(), dmu.end(), T(0));
    std::fill(drs.begin(), drs.end(), T(0));
    for (int64_t i = 0; i < M; ++i) {
      T *dri = dr.data() + i * L, *dti = dt + i * L, *ri = r + i * L;
      const T *pi = p + i * L, *ti = tc + i * L;
      T delta = T(0);
      for (int64_t j = 0; j < L; ++j) {
        dri[j] -= dus[i] * mu[j];                                  // ∂L/∂r_ij
        dti[j] = dri[j] * rstd[j] + (gp ? gp[i * L + j] : T(0));  // ∂L/∂p_ij
        delta += pi[j] * dti[j];
      }
      T m = T(0);
      for (int64_t j = 0; j < L; ++j) {
        const T ds = pi[j] * (dti[j] - delta);  // ∂L/∂S_ij
        dti[j] = ds * rstd[j] * a.scale;        // ∂L/∂(g_i · x_j)
        ri[j] = pi[j] * rstd[j];
        // μ and σ: S and U depend on them
        dmu[j] -= dti[j] * gs[i] + ri[j] * dus[i];
        drs[j] += ds * ti[j] + dri[j] * pi[j];
        m += dti[j] * mu[j];
      }
      dtm[i] = m;
    }
    // dσ⁻¹_j/dx_jc = −σ_j⁻³ (x_jc − μ_j) / C and dμ_j/dx_jc = 1 / C
    for (int64_t j = 0; j < L; ++j) {
      bb[j] = -drs[j] * rstd[j] * rstd[j] * rstd[j] / T(C);
      aa[j] = dmu[j] / T(C) - bb[j] * mu[j];
    }
    T* gg = a.grad_g + b * M * C;
    blas.mm(row_major(dt, M, L, L), x, gg, C);  // dT x, then − Σ_j dT_ij μ_j
    for (int64_t i = 0; i < M; ++i) add_scalar<T, VB>(gg + i * C, C, -dtm[i]);
    // ∂x = gᵀ dT + (∂U)ᵀ R + x bb + aa, in x's layout
    const T* xb = static_cast<const T*>(x.data);
    T* gxb = a.gx + b * a.gb;
    const MatView gc = row_major(gcat.data(), 2 * M, C, C), dc = row_major(dcat.data(), 2 * M, L, L);
    if (a.gl == 1) {  // [C, L] rows, as x's (the map layout: x's tokens are contiguous too)
      blas.mm(gc.t(), dc, gxb, a.gc);
      using Vt = typename vec::V<T, VB>::type;
      constexpr int W = vec::V<T, VB>::W;
      for (int64_t c = 0; c < C; ++c) {
        T* o = gxb + c * a.gc;
        const T* xr = xb + c * G.xc;
        int64_t j = 0;
        for (; j + W <= L; j += W) {
          const Vt v = vec::load<VB>(o + j) + vec::load<VB>(xr + j) * vec::load<VB>(bb.data() + j) +
                       vec::load<VB>(aa.data() + j);
          vec::store(o + j, v);
        }
        for (; j < L; ++j) o[j] += xr[j] * bb[j] + aa[j];
      }
    } else {  // [L, C] rows
      blas.mm(dc.t(), gc, gxb, a.gl);
      for (int64_t j = 0; j < L; ++j) {
        T* o = gxb + j * a.gl;
        const T* xr = xb + j * G.xl;
        if (G.xc == 1) {
          vec::axpy<T, VB>(C, bb[j], xr, o);
          add_scalar<T, VB>(o, C, aa[j]);
        } else {
          for (int64_t c = 0; c < C; ++c) o[c] += xr[c * G.xc] * bb[j] + aa[j];
        }
      }
    }
  }
}

REIDKERN_ISA_CLONES(fold_fwd, fwd_range)
REIDKERN_ISA_CLONES(fold_bwd, bwd_range)

FoldGeom check_fold(const Tensor& g, const Tensor& x) {
  check_dim(g, 3, "g");
  check_dim(x, 3, "x");
  check_floating(g, "g");
  STD_TORCH_CHECK(x.scalar_type() == g.scalar_type(), "g and x must have the same dtype");
  STD_TORCH_CHECK(g.is_contiguous(), "g must be contiguous");
  FoldGeom G{g.size(0), g.size(1), x.size(1), g.size(2), x.stride(0), x.stride(1), x.stride(2)};
  STD_TORCH_CHECK(x.size(0) == G.B && x.size(2) == G.C, "x must be [B, L, C] with g's B and C");
  STD_TORCH_CHECK(G.L >= 1 && G.M >= 1 && G.C >= 1, "M, L and C must be at least 1");
  return G;
}

void check_like(const Tensor& t, const Tensor& g, int64_t numel, const char* name) {
  STD_TORCH_CHECK(t.is_contiguous() && t.scalar_type() == g.scalar_type() && t.numel() == numel,
                  name, " must be contiguous, of g's dtype, with ", numel, " elements");
}

Blas cpu_blas(const Tensor& t) { return Blas{t.device(), t.scalar_type()}; }

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> folded_attention_fwd_cpu(const Tensor& g,
                                                                           const Tensor& x,
                                                                           double eps, double scale) {
  const FoldGeom G = check_fold(g, x);
  const auto st = g.scalar_type();
  const auto dev = g.device();
  auto u = torch::stable::empty({G.B, G.M, G.C}, st, std::nullopt, dev);
  auto p = torch::stable::empty({G.B, G.M, G.L}, st, std::nullopt, dev);
  auto tc = torch::stable::empty({G.B, G.M, G.L}, st, std::nullopt, dev);
  auto mu = torch::stable::empty({G.B, G.L}, st, std::nullopt, dev);
  auto rstd = torch::stable::empty({G.B, G.L}, st, std::nullopt, dev);
  const Blas blas = cpu_blas(g);
  REIDKERN_DISPATCH_FLOATING(g, "folded_attention_fwd", [&] {
    using T = scalar_t;
    const FoldFwdArgs<T> a{static_cast<const T*>(g.const_data_ptr()),
                           static_cast<const T*>(x.const_data_ptr()),
                           T(eps),
                           T(scale),
                           static_cast<T*>(u.mutable_data_ptr()),
                           static_cast<T*>(p.mutable_data_ptr()),
                           static_cast<T*>(tc.mutable_data_ptr()),
                           static_cast<T*>(mu.mutable_data_ptr()),
                           static_cast<T*>(rstd.mutable_data_ptr())};
    advise_huge_pages(a.u, u.numel() * int64_t(sizeof(T)));
    torch::stable::parallel_for(0, G.B, 1, [&](int64_t begin, int64_t end) {
      fold_fwd<T>(G, a, blas, begin, end);
    });
  });
  return {u, p, tc, mu, rstd};
}

std::tuple<Tensor, Tensor> folded_attention_bwd_cpu(const Tensor& grad_u,
                                                    const std::optional<Tensor>& grad_p,
                                                    const Tensor& g, const Tensor& x,
                                                    const Tensor& p, const Tensor& tc,
                                                    const Tensor& mu, const Tensor& rstd,
                                                    double scale) {
  const FoldGeom G = check_fold(g, x);
  check_like(grad_u, g, G.B * G.M * G.C, "grad_u");
  if (grad_p.has_value()) check_like(*grad_p, g, G.B * G.M * G.L, "grad_p");
  check_like(p, g, G.B * G.M * G.L, "p");
  check_like(tc, g, G.B * G.M * G.L, "tc");
  check_like(mu, g, G.B * G.L, "mu");
  check_like(rstd, g, G.B * G.L, "rstd");
  const auto st = g.scalar_type();
  const auto dev = g.device();
  auto grad_g = torch::stable::empty({G.B, G.M, G.C}, st, std::nullopt, dev);
  // the gradient of x in x's layout: a transposed [B, C, L] map gets its gradient as one (the same
  // rule as folded_norm.py's _map_layout)
  const bool map = G.xl == 1 && G.L > 1;
  Tensor gx = map ? torch::stable::empty({G.B, G.C, G.L}, st, std::nullopt, dev)
                  : torch::stable::empty({G.B, G.L, G.C}, st, std::nullopt, dev);
  const Blas blas = cpu_blas(g);
  REIDKERN_DISPATCH_FLOATING(g, "folded_attention_bwd", [&] {
    using T = scalar_t;
    const FoldBwdArgs<T> a{static_cast<const T*>(grad_u.const_data_ptr()),
                           grad_p.has_value() ? static_cast<const T*>(grad_p->const_data_ptr())
                                              : nullptr,
                           static_cast<const T*>(g.const_data_ptr()),
                           static_cast<const T*>(x.const_data_ptr()),
                           static_cast<const T*>(p.const_data_ptr()),
                           static_cast<const T*>(tc.const_data_ptr()),
                           static_cast<const T*>(mu.const_data_ptr()),
                           static_cast<const T*>(rstd.const_data_ptr()),
                           T(scale),
                           static_cast<T*>(grad_g.mutable_data_ptr()),
                           static_cast<T*>(gx.mutable_data_ptr()),
                           G.C * G.L,
                           map ? int64_t(1) : G.C,
                           map ? G.L : int64_t(1)};
    advise_huge_pages(a.gx, gx.numel() * int64_t(sizeof(T)));
    advise_huge_pages(a.grad_g, grad_g.numel() * int64_t(sizeof(T)));
    torch::stable::parallel_for(0, G.B, 1, [&](int64_t begin, int64_t end) {
      fold_bwd<T>(G, a, blas, begin, end);
    });
  });
  return {grad_g, map ? torch::stable::transpose(gx, 1, 2) : gx};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CPU, m) {
  m.impl("folded_attention_fwd", TORCH_BOX(&folded_attention_fwd_cpu));
  m.impl("folded_attention_bwd", TORCH_BOX(&folded_attention_bwd_cpu));
}

}  // namespace reidkern

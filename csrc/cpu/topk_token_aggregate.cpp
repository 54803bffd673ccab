// CPU kernels of reidkern::topk_token_aggregate_fwd / _bwd (CAL discriminative region mining):
// for each (batch b, part p) keep the k highest scores of column p (ties: lowest token index
// first), and return P[b, p] = sum_t s_t T[b, i_t] / sum_t s_t (the score-weighted mean of the kept
// tokens), the kept indices [B, Np, k] (by decreasing score) and S_hat [B, L, Np] (the scores where
// kept, 0 elsewhere).
//
// Forward: one task per (b, p): a partial sort of L indices, then k row-axpys over C channels.
// Backward: one task per batch b: with g = dP[b, p], a_t = T[b, i_t] . g, Z = sum_t s_t and
// a_bar = sum_t s_t a_t / Z,
//   dS[b, i_t, p] = (a_t - a_bar) / Z (+ grad of S_hat where kept),
//   dT[b, l] = sum over parts p keeping l of (s_l / Z_p) g_p   (every row written exactly once).
// Z = 0 (all kept scores zero) is treated as Z = 1, which gives P = 0.
// The task loops (axpy, dot over C) are compiled per instruction set (cpu/simd.h).
#include "common.h"
#include "cpu/simd.h"
#include "huge_pages.h"

#include <algorithm>
#include <numeric>
#include <vector>

namespace reidkern {
namespace {

struct TopkGeom {
  int64_t B, L, Np, C, k;
  int64_t ss0, ss1, ss2;  // scores strides
  int64_t ts0, ts1;       // tokens strides (channel stride 1)
};

// Top-k of column p of scores[b]: idx[0..k) by decreasing score, ties by lower index. NaN ranks
// above every number (as torch.sort(descending=True) orders it), so the comparator stays a strict
// weak ordering -- nth_element/sort with NaN would otherwise be undefined behaviour. The Python
// layer refuses NaN, but compiled graphs skip that data-dependent check.
template <typename T>
REIDKERN_INLINE void select_topk(const TopkGeom& g, const T* sc, std::vector<int64_t>& idx) {
  idx.resize(g.L);
  std::iota(idx.begin(), idx.end(), 0);
  auto before = [&](int64_t a, int64_t b) {
    const T sa = sc[a * g.ss1], sb = sc[b * g.ss1];
    const bool na = sa != sa, nb = sb != sb;
    if (na || nb) return na && (!nb || a < b);
    return sa > sb || (sa == sb && a < b);
  };
  if (g.k < g.L) {
    std::nth_element(idx.begin(), idx.begin() + g.k, idx.end(), before);
  }
  std::sort(idx.begin(), idx.begin() + g.k, before);
}

template <typename T>
struct TopkFwdArgs {
  const T* scores;   // [B, L, Np], strides in TopkGeom
  const T* tokens;   // [B, L, C], strides in TopkGeom
  T* parts;          // [B, Np, C] contiguous
  int64_t* indices;  // [B, Np, k] contiguous
  T* selected;       // [B, L, Np] contiguous
};

template <typename T>
struct TopkBwdArgs {
  const T* grad_parts;     // [B, Np, C] contiguous
  const T* grad_selected;  // [B, L, Np] contiguous or nullptr
  const T* scores;
  const T* tokens;
  const int64_t* indices;  // [B, Np, k] contiguous
  T* dscores;              // [B, L, Np] contiguous
  T* dtokens;              // tokens' layout: strides dts0, dts1, channel stride 1
  int64_t dts0, dts1;
};

template <typename T, int VB>
REIDKERN_INLINE void topk_fwd_task(const TopkGeom& g, const TopkFwdArgs<T>& a, int64_t bp,
                                   std::vector<int64_t>& idx) {
  const int64_t b = bp / g.Np, p = bp % g.Np;
  const T* sc = a.scores + b * g.ss0 + p * g.ss2;
  select_topk<T>(g, sc, idx);
  T* out = a.parts + bp * g.C;
  for (int64_t c = 0; c < g.C; ++c) out[c] = T(0);
  T z = T(0);
  T* sel = a.selected + b * g.L * g.Np + p;
  for (int64_t l = 0; l < g.L; ++l) sel[l * g.Np] = T(0);
  for (int64_t t = 0; t < g.k; ++t) {
    const int64_t l = idx[t];
    const T s = sc[l * g.ss1];
    z += s;
    sel[l * g.Np] = s;
    a.indices[bp * g.k + t] = l;
    vec::axpy<T, VB>(g.C, s, a.tokens + b * g.ts0 + l * g.ts1, out);
  }
  // Divide by Z rather than multiply by 1/Z: a part whose kept softmax scores all underflow has
  // a denormal Z whose reciprocal overflows to inf (inf * 0 = NaN in the output).
  const T zz = z != T(0) ? z : T(1);
  for (int64_t c = 0; c < g.C; ++c) out[c] /= zz;
}

template <typename T, int VB>
REIDKERN_INLINE void topk_bwd_task(const TopkGeom& g, const TopkBwdArgs<T>& a, int64_t b,
                                   std::vector<T>& coef) {
  const int64_t L = g.L, Np = g.Np, C = g.C, k = g.k;
  coef.assign(L * Np, T(0));  // coef[l, p] = s_l / Z_p where part p keeps token l
  T* ds = a.dscores + b * L * Np;
  for (int64_t t = 0; t < L * Np; ++t) ds[t] = T(0);
  const T* tb = a.tokens + b * g.ts0;
  for (int64_t p = 0; p < Np; ++p) {
    const int64_t* id = a.indices + (b * Np + p) * k;
    const T* sc = a.scores + b * g.ss0 + p * g.ss2;
    const T* gp = a.grad_parts + (b * Np + p) * C;
    T z = T(0);
    for (int64_t t = 0; t < k; ++t) z += sc[id[t] * g.ss1];
    const T zz = z != T(0) ? z : T(1);  // divided by, never inverted (see topk_fwd_task)
    T abar = T(0);
    for (int64_t t = 0; t < k; ++t) {
      const int64_t l = id[t];
      const T s = sc[l * g.ss1];
      const T at = vec::dot<T, VB>(C, tb + l * g.ts1, gp);
      ds[l * Np + p] = at;  // a_t for now
      abar += s * at;
      coef[l * Np + p] = s / zz;
    }
    abar /= zz;
    for (int64_t t = 0; t < k; ++t) {
      const int64_t l = id[t];
      T d = (ds[l * Np + p] - abar) / zz;
      if (a.grad_selected) d += a.grad_selected[(b * L + l) * Np + p];
      ds[l * Np + p] = d;
    }
  }
  T* dtb = a.dtokens + b * a.dts0;
  for (int64_t l = 0; l < L; ++l) {
    T* row = dtb + l * a.dts1;
    for (int64_t c = 0; c < C; ++c) row[c] = T(0);
    for (int64_t p = 0; p < Np; ++p) {
      const T cf = coef[l * Np + p];
      if (cf != T(0)) vec::axpy<T, VB>(C, cf, a.grad_parts + (b * Np + p) * C, row);
    }
  }
}

// Tasks [begin, end) of one parallel_for chunk, compiled per instruction set (cpu/simd.h).
template <typename T, int VB>
REIDKERN_INLINE void topk_fwd_range(TopkGeom g, TopkFwdArgs<T> a, int64_t begin, int64_t end) {
  std::vector<int64_t> idx;
  for (int64_t bp = begin; bp < end; ++bp) topk_fwd_task<T, VB>(g, a, bp, idx);
}
template <typename T, int VB>
REIDKERN_INLINE void topk_bwd_range(TopkGeom g, TopkBwdArgs<T> a, int64_t begin, int64_t end) {
  std::vector<T> coef;
  for (int64_t b = begin; b < end; ++b) topk_bwd_task<T, VB>(g, a, b, coef);
}
REIDKERN_ISA_CLONES(topk_fwd, topk_fwd_range)
REIDKERN_ISA_CLONES(topk_bwd, topk_bwd_range)

TopkGeom check_topk(const Tensor& scores, const Tensor& tokens, int64_t k) {
  check_dim(scores, 3, "scores");
  check_dim(tokens, 3, "tokens");
  check_floating(scores, "scores");
  STD_TORCH_CHECK(tokens.scalar_type() == scores.scalar_type(),
                  "scores and tokens must have the same dtype");
  TopkGeom g{};
  g.B = scores.size(0);
  g.L = scores.size(1);
  g.Np = scores.size(2);
  g.C = tokens.size(2);
  g.k = k;
  STD_TORCH_CHECK(tokens.size(0) == g.B && tokens.size(1) == g.L, "tokens must be [B, L, C]");
  STD_TORCH_CHECK(k >= 1 && k <= g.L, "k must be in [1, L]");
  STD_TORCH_CHECK(tokens.stride(2) == 1, "tokens must have unit stride on the channel dimension");
  g.ss0 = scores.stride(0);
  g.ss1 = scores.stride(1);
  g.ss2 = scores.stride(2);
  g.ts0 = tokens.stride(0);
  g.ts1 = tokens.stride(1);
  return g;
}

std::tuple<Tensor, Tensor, Tensor> topk_token_aggregate_fwd_cpu(const Tensor& scores,
                                                                const Tensor& tokens, int64_t k) {
  const TopkGeom g = check_topk(scores, tokens, k);
  const auto st = scores.scalar_type();
  const auto dev = scores.device();
  auto parts = torch::stable::empty({g.B, g.Np, g.C}, st, std::nullopt, dev);
  auto indices = torch::stable::empty({g.B, g.Np, g.k}, ScalarType::Long, std::nullopt, dev);
  auto selected = torch::stable::empty({g.B, g.L, g.Np}, st, std::nullopt, dev);
  int64_t* ip = indices.mutable_data_ptr<int64_t>();
  REIDKERN_DISPATCH_FLOATING(scores, "topk_token_aggregate_fwd", [&] {
    using T = scalar_t;
    const TopkFwdArgs<T> a{static_cast<const T*>(scores.const_data_ptr()),
                           static_cast<const T*>(tokens.const_data_ptr()),
                           static_cast<T*>(parts.mutable_data_ptr()), ip,
                           static_cast<T*>(selected.mutable_data_ptr())};
    torch::stable::parallel_for(0, g.B * g.Np, 1, [&](int64_t begin, int64_t end) {
      topk_fwd<T>(g, a, begin, end);
    });
  });
  return {parts, indices, selected};
}

std::tuple<Tensor, Tensor> topk_token_aggregate_bwd_cpu(const Tensor& grad_parts,
                                                        const std::optional<Tensor>& grad_selected,
                                                        const Tensor& scores, const Tensor& tokens,
                                                        const Tensor& indices) {
  check_dim(indices, 3, "indices");
  const TopkGeom g = check_topk(scores, tokens, indices.size(2));
  const auto st = scores.scalar_type();
  STD_TORCH_CHECK(grad_parts.is_contiguous() && grad_parts.scalar_type() == st &&
                      grad_parts.numel() == g.B * g.Np * g.C,
                  "grad_parts must be a contiguous [B, Np, C] tensor");
  STD_TORCH_CHECK(indices.is_contiguous() && indices.scalar_type() == ScalarType::Long &&
                      indices.size(0) == g.B && indices.size(1) == g.Np,
                  "indices must be a contiguous int64 [B, Np, k] tensor");
  if (grad_selected.has_value())
    STD_TORCH_CHECK(grad_selected->is_contiguous() && grad_selected->scalar_type() == st &&
                        grad_selected->numel() == g.B * g.L * g.Np,
                    "grad_selected must be a contiguous [B, L, Np] tensor");
  auto dscores = torch::stable::empty({g.B, g.L, g.Np}, st, std::nullopt, scores.device());
  auto dtokens = torch::stable::empty_like(tokens);
  STD_TORCH_CHECK(dtokens.stride(2) == 1, "unexpected gradient layout");
  const int64_t* ip = indices.const_data_ptr<int64_t>();
  REIDKERN_DISPATCH_FLOATING(scores, "topk_token_aggregate_bwd", [&] {
    using T = scalar_t;
    const TopkBwdArgs<T> a{
        static_cast<const T*>(grad_parts.const_data_ptr()),
        grad_selected.has_value() ? static_cast<const T*>(grad_selected->const_data_ptr()) : nullptr,
        static_cast<const T*>(scores.const_data_ptr()),
        static_cast<const T*>(tokens.const_data_ptr()),
        ip,
        static_cast<T*>(dscores.mutable_data_ptr()),
        static_cast<T*>(dtokens.mutable_data_ptr()),
        dtokens.stride(0),
        dtokens.stride(1)};
    advise_huge_pages(a.dtokens, dtokens.numel() * int64_t(sizeof(T)));
    torch::stable::parallel_for(0, g.B, 1, [&](int64_t begin, int64_t end) {
      topk_bwd<T>(g, a, begin, end);
    });
  });
  return {dscores, dtokens};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CPU, m) {
  m.impl("topk_token_aggregate_fwd", TORCH_BOX(&topk_token_aggregate_fwd_cpu));
  m.impl("topk_token_aggregate_bwd", TORCH_BOX(&topk_token_aggregate_bwd_cpu));
}

}  // namespace reidkern

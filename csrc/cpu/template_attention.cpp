// CPU entry points of reidkern::template_attention_fwd / _bwd: a few learned queries (Nq <= 32)
// over up to 512 keys with head dim up to 512 (and LGUR's 192 queries over 400 dictionary atoms),
// forward and backward fused per (batch, head).
//
// One task per (b, h), run by torch's intra-op pool. A task keeps its logits / probabilities
// [Nq, L] in a small thread-local buffer, never a [B, H, Nq, L] tensor unless the weights are
// asked for. Forward saves the log-sum-exp per query row; backward recomputes the probabilities
// from it (flash-attention style) and needs neither the weights nor the output:
//   P = exp(S - lse), dP = dO V^T (+ grad of the returned weights), delta_i = sum_j P_ij dP_ij,
//   dS = P (dP - delta) + grad_mean_i / n_valid, dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO.
// A query row whose keys are all padding gets zero output, zero weights, zero mean logit, lse=-inf
// and zero gradients.
//
// This file checks the arguments, allocates the outputs, picks one of three strategies from the
// shape and runs it over the (b, h) tasks (cpu/template_attention_strategies.h lists them):
//   * Nq <= 8 (and D <= 128 or little work): few-query kernels, one vector lane per query
//     (template_attention_few_queries.cpp);
//   * otherwise, with Nq * L * D >= 2^16: torch's mm (BLAS) per task (template_attention_blas.cpp);
//   * small tasks: dot-product kernels on the compacted valid keys (template_attention_small.cpp).
// Each strategy is compiled for AVX-512 / AVX2+FMA / baseline vectors and picked from the CPU's
// features at run time (cpu/simd.h). Big fresh outputs get a transparent-huge-page hint before
// their first touch.
#include "common.h"
#include "cpu/blas.h"
#include "template_attention.h"
#include "cpu/template_attention_strategies.h"
#include "huge_pages.h"

namespace reidkern {
namespace {

using attn::AttnBwdArgs;
using attn::AttnFwdArgs;
using attn::AttnGeom;
using attn::HeadStrides;

HeadStrides head_strides(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

AttnGeom check_geometry(const Tensor& q, const Tensor& k, const Tensor& v,
                        const std::optional<Tensor>& mask) {
  check_template_attention_inputs(q, k, v, mask);
  AttnGeom g{};
  g.B = k.size(0);
  g.H = k.size(1);
  g.L = k.size(2);
  g.D = k.size(3);
  g.Nq = q.size(2);
  g.q_bcast = q.size(0) == 1 && g.B != 1;
  g.q = head_strides(q);
  g.k = head_strides(k);
  g.v = head_strides(v);
  g.few = g.Nq >= 1 && g.Nq <= attn::kFewQueries && g.L >= 1 && g.D >= 1 &&
          (g.D <= attn::kFewMaxD || g.Nq * g.L * g.D < attn::kBlasMinMacs);
  g.blas = !g.few && g.Nq * g.L * g.D >= attn::kBlasMinMacs;
  return g;
}

// Runs the (b, h) tasks forward (a: AttnFwdArgs) or backward (AttnBwdArgs) with g's strategy.
template <typename A>
void run_tasks(const AttnGeom& g, const A& a, const Blas& blas) {
  torch::stable::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
    if (g.few) attn::few_queries(g, a, blas, begin, end);
    else if (g.blas) attn::blas_gemms(g, a, blas, begin, end);
    else attn::small_tasks(g, a, blas, begin, end);
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor> template_attention_fwd_cpu(
    const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& mask,
    double scale, bool return_weights) {
  const AttnGeom g = check_geometry(q, k, v, mask);
  const auto st = q.scalar_type();
  const auto dev = q.device();
  auto out = torch::stable::empty({g.B, g.H, g.Nq, g.D}, st, std::nullopt, dev);
  auto lse = torch::stable::empty({g.B, g.H, g.Nq}, st, std::nullopt, dev);
  auto mean = torch::stable::empty({g.B, g.H, g.Nq}, st, std::nullopt, dev);
  auto weights = return_weights
                     ? torch::stable::empty({g.B, g.H, g.Nq, g.L}, st, std::nullopt, dev)
                     : torch::stable::empty({0}, st, std::nullopt, dev);
  const bool* m = mask.has_value() ? mask->const_data_ptr<bool>() : nullptr;
  const Blas blas{dev, st};
  REIDKERN_DISPATCH_FLOATING(q, "template_attention_fwd", [&] {
    using T = scalar_t;
    const AttnFwdArgs<T> a{static_cast<const T*>(q.const_data_ptr()),
                           static_cast<const T*>(k.const_data_ptr()),
                           static_cast<const T*>(v.const_data_ptr()),
                           m,
                           T(scale),
                           static_cast<T*>(out.mutable_data_ptr()),
                           static_cast<T*>(lse.mutable_data_ptr()),
                           static_cast<T*>(mean.mutable_data_ptr()),
                           return_weights ? static_cast<T*>(weights.mutable_data_ptr()) : nullptr};
    advise_huge_pages(a.out, g.B * g.H * g.Nq * g.D * int64_t(sizeof(T)));
    if (a.weights) advise_huge_pages(a.weights, g.B * g.H * g.Nq * g.L * int64_t(sizeof(T)));
    run_tasks(g, a, blas);
  });
  return {out, lse, mean, weights};
}

std::tuple<Tensor, Tensor, Tensor> template_attention_bwd_cpu(
    const Tensor& grad_out, const std::optional<Tensor>& grad_weights,
    const std::optional<Tensor>& grad_mean, const Tensor& q, const Tensor& k, const Tensor& v,
    const std::optional<Tensor>& mask, const Tensor& lse, double scale) {
  const AttnGeom g = check_geometry(q, k, v, mask);
  const auto st = q.scalar_type();
  const auto dev = q.device();
  check_template_attention_grads(grad_out, grad_weights, grad_mean, q, k, lse);
  // dq per (b, h); the caller sums over b when q was broadcast. dk, dv keep k's and v's layout.
  auto dq = torch::stable::empty({g.B, g.H, g.Nq, g.D}, st, std::nullopt, dev);
  auto dk = torch::stable::empty_like(k);
  auto dv = torch::stable::empty_like(v);
  STD_TORCH_CHECK(dk.stride(3) == 1 && dv.stride(3) == 1, "unexpected gradient layout");
  const bool* m = mask.has_value() ? mask->const_data_ptr<bool>() : nullptr;
  const Blas blas{dev, st};
  REIDKERN_DISPATCH_FLOATING(q, "template_attention_bwd", [&] {
    using T = scalar_t;
    const AttnBwdArgs<T> a{
        static_cast<const T*>(grad_out.const_data_ptr()),
        grad_weights.has_value() ? static_cast<const T*>(grad_weights->const_data_ptr()) : nullptr,
        grad_mean.has_value() ? static_cast<const T*>(grad_mean->const_data_ptr()) : nullptr,
        static_cast<const T*>(q.const_data_ptr()),
        static_cast<const T*>(k.const_data_ptr()),
        static_cast<const T*>(v.const_data_ptr()),
        m,
        T(scale),
        static_cast<const T*>(lse.const_data_ptr()),
        static_cast<T*>(dq.mutable_data_ptr()),
        static_cast<T*>(dk.mutable_data_ptr()),
        static_cast<T*>(dv.mutable_data_ptr()),
        head_strides(dk),
        head_strides(dv)};
    advise_huge_pages(a.dq, g.B * g.H * g.Nq * g.D * int64_t(sizeof(T)));
    advise_huge_pages(a.dk, dk.numel() * int64_t(sizeof(T)));
    advise_huge_pages(a.dv, dv.numel() * int64_t(sizeof(T)));
    run_tasks(g, a, blas);
  });
  return {dq, dk, dv};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CPU, m) {
  m.impl("template_attention_fwd", TORCH_BOX(&template_attention_fwd_cpu));
  m.impl("template_attention_bwd", TORCH_BOX(&template_attention_bwd_cpu));
}

}  // namespace reidkern

// CUDA kernels of reidkern::template_attention_fwd / _bwd (few queries over L keys, D <= 512).
//
// Forward: one block per (b, h, query): the block computes the query's logits over all keys (one
// warp per key, lanes over D) into shared memory, the softmax statistics by block reductions,
// and out = P V with threads over D. Saves the log-sum-exp (-inf for a fully padded row).
// Backward, two kernels: (1) one block per (b, h, query): P and dP = dO V^T (+ grad of the
// weights) into shared memory, delta = sum_j P dP, dS, and dQ = scale dS K (threads over D);
// delta is stored for (2): one warp per (b, h, key), which loops over the queries to give
// dV_j = sum_i P_ij dO_i and dK_j = scale sum_i dS_ij q_i in registers (lanes over D), so no
// atomics. Shared memory: O(L) per block.
#include "common.h"
#include "cuda/cuda_utils.h"
#include "template_attention.h"

#include <limits>

namespace reidkern {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxD = 512;
constexpr int kPerLane = kMaxD / 32;

struct Geom {
  int64_t H, Nq, L, D;
  int64_t qs0, qs1, qs2, ks0, ks1, ks2, vs0, vs1, vs2;
};

// warp_sum / warp_max: cuda/cuda_utils.h.
// Block-wide sum / max (all threads get the result).
template <typename T, bool MAX>
__device__ T block_reduce(T x, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = MAX ? warp_max(x) : warp_sum(x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  T r = scratch[0];
  for (int w = 1; w < kWarps; ++w) r = MAX ? max(r, scratch[w]) : r + scratch[w];
  return r;
}

template <typename T>
__device__ T dot_warp(const T* __restrict__ a, const T* __restrict__ b, int64_t D) {
  T s = T(0);
  for (int64_t d = threadIdx.x & 31; d < D; d += 32) s += a[d] * b[d];
  return warp_sum(s);
}

template <typename T>
__global__ void fwd_kernel(Geom g, const T* __restrict__ q, const T* __restrict__ k,
                           const T* __restrict__ v, const bool* __restrict__ mask, T scale,
                           T* __restrict__ out, T* __restrict__ lse, T* __restrict__ mean,
                           T* __restrict__ weights) {
  extern __shared__ unsigned char smem_raw[];
  T* s = reinterpret_cast<T*>(smem_raw);  // [L] logits then probabilities
  __shared__ T scratch[kWarps];
  const int64_t row = blockIdx.x;  // (b * H + h) * Nq + i
  const int64_t i = row % g.Nq, bh = row / g.Nq, b = bh / g.H, h = bh % g.H;
  const T* qr = q + b * g.qs0 + h * g.qs1 + i * g.qs2;
  const T* kb = k + b * g.ks0 + h * g.ks1;
  const T* vb = v + b * g.vs0 + h * g.vs1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t j = warp; j < g.L; j += kWarps) {
    const T x = dot_warp(qr, kb + j * g.ks2, g.D) * scale;
    if (lane == 0) s[j] = (mask && mask[b * g.L + j]) ? ninf : x;
  }
  __syncthreads();
  T mx = ninf, sum_logit = T(0), cnt = T(0);
  for (int64_t j = threadIdx.x; j < g.L; j += kThreads) {
    mx = max(mx, s[j]);
    if (s[j] != ninf) {
      sum_logit += s[j];
      cnt += T(1);
    }
  }
  mx = block_reduce<T, true>(mx, scratch);
  sum_logit = block_reduce<T, false>(sum_logit, scratch);
  cnt = block_reduce<T, false>(cnt, scratch);
  const bool live = cnt > T(0);
  T denom = T(0);
  for (int64_t j = threadIdx.x; j < g.L; j += kThreads) {
    const T p = live && s[j] != ninf ? exp(s[j] - mx) : T(0);
    s[j] = p;
    denom += p;
  }
  denom = block_reduce<T, false>(denom, scratch);
  const T inv = live ? T(1) / denom : T(0);
  __syncthreads();
  for (int64_t j = threadIdx.x; j < g.L; j += kThreads) {
    s[j] *= inv;
    if (weights) weights[row * g.L + j] = s[j];
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < g.D; d += kThreads) {
    T acc = T(0);
    for (int64_t j = 0; j < g.L; ++j) acc += s[j] * vb[j * g.vs2 + d];
    out[row * g.D + d] = acc;
  }
  if (threadIdx.x == 0) {
    lse[row] = live ? mx + log(denom) : ninf;
    mean[row] = live ? sum_logit / cnt : T(0);
  }
}

// Per (b, h, i): delta_i and dq_i. Shared: P [L], dS [L].
template <typename T>
__global__ void bwd_dq_kernel(Geom g, const T* __restrict__ dout, const T* __restrict__ gw,
                              const T* __restrict__ gmean, const T* __restrict__ q,
                              const T* __restrict__ k, const T* __restrict__ v,
                              const bool* __restrict__ mask, const T* __restrict__ lse, T scale,
                              T* __restrict__ dq, T* __restrict__ delta_out) {
  extern __shared__ unsigned char smem_raw[];
  T* p = reinterpret_cast<T*>(smem_raw);
  T* ds = p + g.L;
  __shared__ T scratch[kWarps];
  const int64_t row = blockIdx.x;
  const int64_t i = row % g.Nq, bh = row / g.Nq, b = bh / g.H, h = bh % g.H;
  const T* qr = q + b * g.qs0 + h * g.qs1 + i * g.qs2;
  const T* kb = k + b * g.ks0 + h * g.ks1;
  const T* vb = v + b * g.vs0 + h * g.vs1;
  const T* dor = dout + row * g.D;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const T l = lse[row];
  const bool live = l != -std::numeric_limits<T>::infinity();
  for (int64_t j = warp; j < g.L; j += kWarps) {
    const bool valid = live && !(mask && mask[b * g.L + j]);
    const T sj = dot_warp(qr, kb + j * g.ks2, g.D) * scale;
    T dp = dot_warp(dor, vb + j * g.vs2, g.D);
    if (lane == 0) {
      if (gw) dp += gw[row * g.L + j];
      p[j] = valid ? exp(sj - l) : T(0);
      ds[j] = valid ? dp : T(0);
    }
  }
  __syncthreads();
  T delta = T(0), cnt = T(0);
  for (int64_t j = threadIdx.x; j < g.L; j += kThreads) {
    delta += p[j] * ds[j];
    cnt += (mask && mask[b * g.L + j]) ? T(0) : T(1);
  }
  delta = block_reduce<T, false>(delta, scratch);
  cnt = block_reduce<T, false>(cnt, scratch);
  const T gm = (gmean && live && cnt > T(0)) ? gmean[row] / cnt : T(0);
  __syncthreads();
  for (int64_t j = threadIdx.x; j < g.L; j += kThreads) {
    const bool valid = live && !(mask && mask[b * g.L + j]);
    ds[j] = valid ? (p[j] * (ds[j] - delta) + gm) * scale : T(0);
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < g.D; d += kThreads) {
    T acc = T(0);
    for (int64_t j = 0; j < g.L; ++j) acc += ds[j] * kb[j * g.ks2 + d];
    dq[row * g.D + d] = acc;
  }
  if (threadIdx.x == 0) delta_out[row] = delta;
}

// One warp per (b, h, key j): dv_j, dk_j accumulated in registers over the queries.
template <typename T>
__global__ void bwd_dkv_kernel(Geom g, const T* __restrict__ dout, const T* __restrict__ gw,
                               const T* __restrict__ gmean, const T* __restrict__ q,
                               const T* __restrict__ k, const T* __restrict__ v,
                               const bool* __restrict__ mask, const T* __restrict__ lse,
                               const T* __restrict__ delta, T scale, T* __restrict__ dk,
                               int64_t dks0, int64_t dks1, int64_t dks2, T* __restrict__ dv,
                               int64_t dvs0, int64_t dvs1, int64_t dvs2, int64_t total) {
  const int64_t wid = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  if (wid >= total) return;
  const int lane = threadIdx.x & 31;
  const int64_t j = wid % g.L, bh = wid / g.L, b = bh / g.H, h = bh % g.H;
  const T* kr = k + b * g.ks0 + h * g.ks1 + j * g.ks2;
  const T* vr = v + b * g.vs0 + h * g.vs1 + j * g.vs2;
  T* dkr = dk + b * dks0 + h * dks1 + j * dks2;
  T* dvr = dv + b * dvs0 + h * dvs1 + j * dvs2;
  T acc_k[kPerLane], acc_v[kPerLane];
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) acc_k[t] = acc_v[t] = T(0);
  const bool valid = !(mask && mask[b * g.L + j]);
  if (valid) {
    T cnt = T(0);
    if (gmean) {
      for (int64_t jj = lane; jj < g.L; jj += 32) cnt += (mask && mask[b * g.L + jj]) ? T(0) : T(1);
      cnt = warp_sum(cnt);
    }
    for (int64_t i = 0; i < g.Nq; ++i) {
      const int64_t row = bh * g.Nq + i;
      const T l = lse[row];
      if (l == -std::numeric_limits<T>::infinity()) continue;
      const T* qr = q + b * g.qs0 + h * g.qs1 + i * g.qs2;
      const T* dor = dout + row * g.D;
      const T p = exp(dot_warp(qr, kr, g.D) * scale - l);
      T dp = dot_warp(dor, vr, g.D);
      if (gw) dp += gw[row * g.L + j];
      T dsv = p * (dp - delta[row]);
      if (gmean) dsv += gmean[row] / cnt;
      dsv *= scale;
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) {
        const int64_t d = lane + 32 * t;
        if (d < g.D) {
          acc_v[t] += p * dor[d];
          acc_k[t] += dsv * qr[d];
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int64_t d = lane + 32 * t;
    if (d < g.D) {
      dkr[d] = acc_k[t];
      dvr[d] = acc_v[t];
    }
  }
}

Geom make_geom(const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& mask) {
  check_template_attention_inputs(q, k, v, mask);
  STD_TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda() && (!mask.has_value() || mask->is_cuda()),
                  "template_attention (CUDA): q, k, v and key_padding_mask must all be CUDA tensors");
  Geom g{};
  const int64_t B = k.size(0);
  g.H = k.size(1);
  g.L = k.size(2);
  g.D = k.size(3);
  g.Nq = q.size(2);
  STD_TORCH_CHECK(g.D <= kMaxD, "template_attention (CUDA): head dim must be <= 512");
  g.qs0 = q.size(0) == B ? q.stride(0) : 0;
  g.qs1 = q.stride(1); g.qs2 = q.stride(2);
  g.ks0 = k.stride(0); g.ks1 = k.stride(1); g.ks2 = k.stride(2);
  g.vs0 = v.stride(0); g.vs1 = v.stride(1); g.vs2 = v.stride(2);
  return g;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> template_attention_fwd_cuda(
    const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& mask,
    double scale, bool return_weights) {
  const Geom g = make_geom(q, k, v, mask);
  const int64_t B = k.size(0);
  const torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  const auto st = q.scalar_type();
  const auto dev = q.device();
  auto out = torch::stable::empty({B, g.H, g.Nq, g.D}, st, std::nullopt, dev);
  auto lse = torch::stable::empty({B, g.H, g.Nq}, st, std::nullopt, dev);
  auto mean = torch::stable::empty({B, g.H, g.Nq}, st, std::nullopt, dev);
  auto weights = return_weights ? torch::stable::empty({B, g.H, g.Nq, g.L}, st, std::nullopt, dev)
                                : torch::stable::empty({0}, st, std::nullopt, dev);
  const int64_t rows = B * g.H * g.Nq;
  if (rows == 0) return {out, lse, mean, weights};
  const bool* m = mask.has_value() ? mask->const_data_ptr<bool>() : nullptr;
  auto stream = current_stream(q, "template_attention");
  REIDKERN_DISPATCH_FLOATING(q, "template_attention_fwd", [&] {
    using T = scalar_t;
    const size_t smem = size_t(g.L) * sizeof(T);
    fwd_kernel<T><<<static_cast<unsigned>(rows), kThreads, smem, stream>>>(
        g, static_cast<const T*>(q.const_data_ptr()), static_cast<const T*>(k.const_data_ptr()),
        static_cast<const T*>(v.const_data_ptr()), m, T(scale), static_cast<T*>(out.mutable_data_ptr()),
        static_cast<T*>(lse.mutable_data_ptr()), static_cast<T*>(mean.mutable_data_ptr()),
        return_weights ? static_cast<T*>(weights.mutable_data_ptr()) : nullptr);
  });
  check_launch("template_attention_fwd");
  return {out, lse, mean, weights};
}

std::tuple<Tensor, Tensor, Tensor> template_attention_bwd_cuda(
    const Tensor& grad_out, const std::optional<Tensor>& grad_weights,
    const std::optional<Tensor>& grad_mean, const Tensor& q, const Tensor& k, const Tensor& v,
    const std::optional<Tensor>& mask, const Tensor& lse, double scale) {
  const Geom g = make_geom(q, k, v, mask);
  const int64_t B = k.size(0);
  check_template_attention_grads(grad_out, grad_weights, grad_mean, q, k, lse);
  const torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  const auto st = q.scalar_type();
  const auto dev = q.device();
  auto dq = torch::stable::empty({B, g.H, g.Nq, g.D}, st, std::nullopt, dev);
  auto dk = torch::stable::empty_like(k);
  auto dv = torch::stable::empty_like(v);
  auto delta = torch::stable::empty({B, g.H, g.Nq}, st, std::nullopt, dev);
  const int64_t rows = B * g.H * g.Nq, keys = B * g.H * g.L;
  const bool* m = mask.has_value() ? mask->const_data_ptr<bool>() : nullptr;
  auto stream = current_stream(q, "template_attention");
  REIDKERN_DISPATCH_FLOATING(q, "template_attention_bwd", [&] {
    using T = scalar_t;
    const T* gop = static_cast<const T*>(grad_out.const_data_ptr());
    const T* gwp = grad_weights.has_value() ? static_cast<const T*>(grad_weights->const_data_ptr()) : nullptr;
    const T* gmp = grad_mean.has_value() ? static_cast<const T*>(grad_mean->const_data_ptr()) : nullptr;
    const T* qp = static_cast<const T*>(q.const_data_ptr());
    const T* kp = static_cast<const T*>(k.const_data_ptr());
    const T* vp = static_cast<const T*>(v.const_data_ptr());
    const T* lp = static_cast<const T*>(lse.const_data_ptr());
    T* deltap = static_cast<T*>(delta.mutable_data_ptr());
    if (rows > 0) {
      bwd_dq_kernel<T><<<static_cast<unsigned>(rows), kThreads, size_t(2 * g.L) * sizeof(T), stream>>>(
          g, gop, gwp, gmp, qp, kp, vp, m, lp, T(scale), static_cast<T*>(dq.mutable_data_ptr()), deltap);
    }
    if (keys > 0) {
      const unsigned blocks = static_cast<unsigned>((keys + kWarps - 1) / kWarps);
      bwd_dkv_kernel<T><<<blocks, kThreads, 0, stream>>>(
          g, gop, gwp, gmp, qp, kp, vp, m, lp, deltap, T(scale), static_cast<T*>(dk.mutable_data_ptr()),
          dk.stride(0), dk.stride(1), dk.stride(2), static_cast<T*>(dv.mutable_data_ptr()), dv.stride(0),
          dv.stride(1), dv.stride(2), keys);
    }
  });
  check_launch("template_attention_bwd");
  return {dq, dk, dv};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CUDA, m) {
  m.impl("template_attention_fwd", TORCH_BOX(&template_attention_fwd_cuda));
  m.impl("template_attention_bwd", TORCH_BOX(&template_attention_bwd_cuda));
}

}  // namespace reidkern

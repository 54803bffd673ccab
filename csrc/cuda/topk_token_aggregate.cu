// CUDA kernels of reidkern::topk_token_aggregate_fwd / _bwd (CAL discriminative region mining).
//
// Forward: one block per (b, part p): the score column goes to shared memory, k rounds of block
// arg-max pick the kept tokens (NaN first, ties to the lowest index), then threads over the C
// channels sum the kept token rows weighted by their scores. Backward, two kernels: (1) one block per (b, p):
// a_t = T[i_t] . g (one warp per kept token), Z, a_bar, and dS at the kept tokens (the rest of
// the column zero); Z is stored for (2): one block per (b, token l) writes dT[b, l] =
// sum over the parts p keeping l of (s_lp / Z_p) g_p, every row exactly once (no atomics).
// Shared memory: O(L + k) per block.
#include "common.h"
#include "cuda/cuda_utils.h"

#include <limits>

namespace reidkern {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct Geom {
  int64_t Np, L, C, k;
  int64_t ss0, ss1, ss2, ts0, ts1;
};

// Whether score a at token ia ranks before score b at token ib: NaN above every number (as
// torch.sort(descending=True) orders it, and the CPU kernel), then the larger, ties to the lower
// index. The Python layer refuses NaN, but compiled graphs skip that data-dependent check, and a
// plain a > b would leave a NaN column's order to the thread layout.
template <typename T>
__device__ __forceinline__ bool ranks_before(T a, int64_t ia, T b, int64_t ib) {
  const bool na = a != a, nb = b != b;
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

template <typename T>
__global__ void fwd_kernel(Geom g, const T* __restrict__ scores, const T* __restrict__ tokens,
                           T* __restrict__ parts, int64_t* __restrict__ indices,
                           T* __restrict__ selected) {
  extern __shared__ unsigned char smem_raw[];
  T* s = reinterpret_cast<T*>(smem_raw);                            // [L] scores
  unsigned char* taken = reinterpret_cast<unsigned char*>(s + g.L);  // [L]
  __shared__ T best_v[kThreads];
  __shared__ int64_t best_i[kThreads];
  __shared__ int64_t kept[1024];
  __shared__ T kept_w[1024];
  const int64_t bp = blockIdx.x, b = bp / g.Np, p = bp % g.Np;
  const T* sc = scores + b * g.ss0 + p * g.ss2;
  for (int64_t l = threadIdx.x; l < g.L; l += kThreads) {
    s[l] = sc[l * g.ss1];
    taken[l] = 0;
    selected[(b * g.L + l) * g.Np + p] = T(0);
  }
  __syncthreads();
  for (int64_t t = 0; t < g.k; ++t) {
    T bv = -std::numeric_limits<T>::infinity();
    int64_t bi = g.L;
    for (int64_t l = threadIdx.x; l < g.L; l += kThreads) {
      if (!taken[l] && (bi == g.L || ranks_before(s[l], l, bv, bi))) {
        bv = s[l];
        bi = l;
      }
    }
    best_v[threadIdx.x] = bv;
    best_i[threadIdx.x] = bi;
    __syncthreads();
    for (int off = kThreads / 2; off > 0; off >>= 1) {
      if (threadIdx.x < off) {
        const T ov = best_v[threadIdx.x + off];
        const int64_t oi = best_i[threadIdx.x + off];
        const int64_t mi = best_i[threadIdx.x];
        if (oi < g.L && (mi == g.L || ranks_before(ov, oi, best_v[threadIdx.x], mi))) {
          best_v[threadIdx.x] = ov;
          best_i[threadIdx.x] = oi;
        }
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      const int64_t j = best_i[0];
      taken[j] = 1;
      kept[t] = j;
      kept_w[t] = s[j];
      indices[bp * g.k + t] = j;
      selected[(b * g.L + j) * g.Np + p] = s[j];
    }
    __syncthreads();
  }
  T z = T(0);
  for (int64_t t = 0; t < g.k; ++t) z += kept_w[t];
  const T zz = z != T(0) ? z : T(1);  // divided by, never inverted: 1/Z overflows for a denormal Z
  const T* tb = tokens + b * g.ts0;
  for (int64_t c = threadIdx.x; c < g.C; c += kThreads) {
    T acc = T(0);
    for (int64_t t = 0; t < g.k; ++t) acc += kept_w[t] * tb[kept[t] * g.ts1 + c];
    parts[bp * g.C + c] = acc / zz;
  }
}

template <typename T>
__global__ void bwd_scores_kernel(Geom g, const T* __restrict__ gparts, const T* __restrict__ gsel,
                                  const T* __restrict__ scores, const T* __restrict__ tokens,
                                  const int64_t* __restrict__ indices, T* __restrict__ dscores,
                                  T* __restrict__ zbuf) {
  extern __shared__ unsigned char smem_raw[];
  T* a = reinterpret_cast<T*>(smem_raw);  // [k]
  const int64_t bp = blockIdx.x, b = bp / g.Np, p = bp % g.Np;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const T* sc = scores + b * g.ss0 + p * g.ss2;
  const T* gp = gparts + bp * g.C;
  const int64_t* id = indices + bp * g.k;
  for (int64_t l = threadIdx.x; l < g.L; l += kThreads) dscores[(b * g.L + l) * g.Np + p] = T(0);
  for (int64_t t = warp; t < g.k; t += kWarps) {
    const T* row = tokens + b * g.ts0 + id[t] * g.ts1;
    T acc = T(0);
    for (int64_t c = lane; c < g.C; c += 32) acc += row[c] * gp[c];
    acc = warp_sum(acc);
    if (lane == 0) a[t] = acc;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    T z = T(0), abar = T(0);
    for (int64_t t = 0; t < g.k; ++t) z += sc[id[t] * g.ss1];
    const T zz = z != T(0) ? z : T(1);
    for (int64_t t = 0; t < g.k; ++t) abar += sc[id[t] * g.ss1] * a[t];
    abar /= zz;
    for (int64_t t = 0; t < g.k; ++t) {
      const int64_t at = (b * g.L + id[t]) * g.Np + p;
      dscores[at] = (a[t] - abar) / zz + (gsel ? gsel[at] : T(0));
    }
    zbuf[bp] = zz;
  }
}

template <typename T>
__global__ void bwd_tokens_kernel(Geom g, const T* __restrict__ gparts,
                                  const T* __restrict__ scores, const int64_t* __restrict__ indices,
                                  const T* __restrict__ zsum, T* __restrict__ dtokens, int64_t dts0,
                                  int64_t dts1) {
  __shared__ T coef[64];
  const int64_t bl = blockIdx.x, b = bl / g.L, l = bl % g.L;
  for (int64_t p0 = 0; p0 < g.Np; p0 += 64) {
    const int64_t np = (g.Np - p0) < 64 ? (g.Np - p0) : 64;
    if (threadIdx.x < np) {
      const int64_t p = p0 + threadIdx.x;
      const int64_t* id = indices + (b * g.Np + p) * g.k;
      T cf = T(0);
      for (int64_t t = 0; t < g.k; ++t)
        if (id[t] == l) cf = scores[b * g.ss0 + l * g.ss1 + p * g.ss2] / zsum[b * g.Np + p];
      coef[threadIdx.x] = cf;
    }
    __syncthreads();
    T* row = dtokens + b * dts0 + l * dts1;
    for (int64_t c = threadIdx.x; c < g.C; c += kThreads) {
      T acc = p0 == 0 ? T(0) : row[c];
      for (int64_t pp = 0; pp < np; ++pp)
        if (coef[pp] != T(0)) acc += coef[pp] * gparts[(b * g.Np + p0 + pp) * g.C + c];
      row[c] = acc;
    }
    __syncthreads();
  }
}

Geom make_geom(const Tensor& scores, const Tensor& tokens, int64_t k) {
  check_dim(scores, 3, "scores");
  check_dim(tokens, 3, "tokens");
  check_floating(scores, "scores");
  STD_TORCH_CHECK(tokens.scalar_type() == scores.scalar_type(), "scores and tokens must have the same dtype");
  STD_TORCH_CHECK(tokens.stride(2) == 1, "tokens must have unit stride on the channel dimension");
  Geom g{};
  g.L = scores.size(1);
  g.Np = scores.size(2);
  g.C = tokens.size(2);
  g.k = k;
  STD_TORCH_CHECK(k >= 1 && k <= g.L, "k must be in [1, L]");
  STD_TORCH_CHECK(k <= 1024, "topk_token_aggregate (CUDA): k must be <= 1024");
  g.ss0 = scores.stride(0); g.ss1 = scores.stride(1); g.ss2 = scores.stride(2);
  g.ts0 = tokens.stride(0); g.ts1 = tokens.stride(1);
  return g;
}

std::tuple<Tensor, Tensor, Tensor> topk_token_aggregate_fwd_cuda(const Tensor& scores,
                                                                 const Tensor& tokens, int64_t k) {
  const Geom g = make_geom(scores, tokens, k);
  const int64_t B = scores.size(0);
  const torch::stable::accelerator::DeviceGuard guard(scores.get_device_index());
  const auto st = scores.scalar_type();
  const auto dev = scores.device();
  auto parts = torch::stable::empty({B, g.Np, g.C}, st, std::nullopt, dev);
  auto indices = torch::stable::empty({B, g.Np, g.k}, ScalarType::Long, std::nullopt, dev);
  auto selected = torch::stable::empty({B, g.L, g.Np}, st, std::nullopt, dev);
  if (B * g.Np == 0) return {parts, indices, selected};
  auto stream = current_stream(scores, "topk_token_aggregate");
  REIDKERN_DISPATCH_FLOATING(scores, "topk_token_aggregate_fwd", [&] {
    using T = scalar_t;
    const size_t smem = size_t(g.L) * (sizeof(T) + 1);
    fwd_kernel<T><<<static_cast<unsigned>(B * g.Np), kThreads, smem, stream>>>(
        g, static_cast<const T*>(scores.const_data_ptr()), static_cast<const T*>(tokens.const_data_ptr()),
        static_cast<T*>(parts.mutable_data_ptr()), indices.mutable_data_ptr<int64_t>(),
        static_cast<T*>(selected.mutable_data_ptr()));
  });
  check_launch("topk_token_aggregate_fwd");
  return {parts, indices, selected};
}

std::tuple<Tensor, Tensor> topk_token_aggregate_bwd_cuda(const Tensor& grad_parts,
                                                         const std::optional<Tensor>& grad_selected,
                                                         const Tensor& scores, const Tensor& tokens,
                                                         const Tensor& indices) {
  check_dim(indices, 3, "indices");
  const Geom g = make_geom(scores, tokens, indices.size(2));
  const int64_t B = scores.size(0);
  STD_TORCH_CHECK(grad_parts.is_contiguous() && indices.is_contiguous(),
                  "grad_parts and indices must be contiguous");
  const torch::stable::accelerator::DeviceGuard guard(scores.get_device_index());
  const auto st = scores.scalar_type();
  auto dscores = torch::stable::empty({B, g.L, g.Np}, st, std::nullopt, scores.device());
  auto dtokens = torch::stable::empty_like(tokens);
  auto zsum = torch::stable::empty({B, g.Np}, st, std::nullopt, scores.device());
  if (B == 0) return {dscores, dtokens};
  auto stream = current_stream(scores, "topk_token_aggregate");
  REIDKERN_DISPATCH_FLOATING(scores, "topk_token_aggregate_bwd", [&] {
    using T = scalar_t;
    const T* gp = static_cast<const T*>(grad_parts.const_data_ptr());
    const T* gs = grad_selected.has_value() ? static_cast<const T*>(grad_selected->const_data_ptr()) : nullptr;
    bwd_scores_kernel<T><<<static_cast<unsigned>(B * g.Np), kThreads, size_t(g.k) * sizeof(T), stream>>>(
        g, gp, gs, static_cast<const T*>(scores.const_data_ptr()), static_cast<const T*>(tokens.const_data_ptr()),
        indices.const_data_ptr<int64_t>(), static_cast<T*>(dscores.mutable_data_ptr()),
        static_cast<T*>(zsum.mutable_data_ptr()));
    bwd_tokens_kernel<T><<<static_cast<unsigned>(B * g.L), kThreads, 0, stream>>>(
        g, gp, static_cast<const T*>(scores.const_data_ptr()), indices.const_data_ptr<int64_t>(),
        static_cast<const T*>(zsum.const_data_ptr()), static_cast<T*>(dtokens.mutable_data_ptr()),
        dtokens.stride(0), dtokens.stride(1));
  });
  check_launch("topk_token_aggregate_bwd");
  return {dscores, dtokens};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CUDA, m) {
  m.impl("topk_token_aggregate_fwd", TORCH_BOX(&topk_token_aggregate_fwd_cuda));
  m.impl("topk_token_aggregate_bwd", TORCH_BOX(&topk_token_aggregate_bwd_cuda));
}

}  // namespace reidkern

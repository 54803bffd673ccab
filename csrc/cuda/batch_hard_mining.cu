// CUDA kernels of reidkern::batch_hard_mining_fwd and _bwd.
//
// Forward: one thread block per tile of kTM = 32 anchors. The block walks the candidates in tiles
// of kTN = 32; for each it builds the 32 x 32 Gram block over D in slices of kBK = 16 through shared
// memory (each of the 256 threads owns a 2 x 2 micro-tile), turns it into distances, and thread r
// (< 32) scans row r of the tile in candidate order, keeping the running hardest positive / negative
// of anchor r in registers (strict improvement only: ties go to the lowest candidate index). No
// B x M array is written; squared norms come from a first small kernel.
//
// Backward: kernel 1 (one block per anchor) computes the coefficients of the two chosen pairs and
// writes grad_x[i]; kernel 2 (one block per candidate j) sums, in anchor order, the contributions of
// every pair that chose j, so grad_ref is deterministic (no atomics).
#include "batch_hard_mining.h"
#include "cuda/cuda_utils.h"

namespace reidkern {
namespace {

constexpr int kTM = 32, kTN = 32, kBK = 16, kThreads = 256;  // metric codes and clamps: csrc/metric.h

template <typename scalar_t>
__device__ __forceinline__ scalar_t block_sum(scalar_t v, scalar_t* shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  scalar_t total = 0;
  const int warps = (blockDim.x + 31) >> 5;
  for (int w = 0; w < warps; ++w) total += shared[w];
  return total;
}

// sq[r] = |row r|^2 for the rows of x [n, D] (row stride sx0, column stride sx1); one block per row.
template <typename scalar_t>
__global__ void sq_norms_kernel(const scalar_t* __restrict__ x, int64_t s0, int64_t s1, int64_t D,
                                scalar_t* __restrict__ out) {
  __shared__ scalar_t red[32];
  const int64_t r = blockIdx.x;
  scalar_t acc = 0;
  for (int64_t k = threadIdx.x; k < D; k += blockDim.x) {
    const scalar_t v = x[r * s0 + k * s1];
    acc += v * v;
  }
  const scalar_t total = block_sum(acc, red);
  if (threadIdx.x == 0) out[r] = total;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) batch_hard_fwd_kernel(
    const scalar_t* __restrict__ x, int64_t sx0, int64_t sx1, const scalar_t* __restrict__ y,
    int64_t sy0, int64_t sy1, const int64_t* __restrict__ lx, const int64_t* __restrict__ ly,
    const scalar_t* __restrict__ nx, const scalar_t* __restrict__ ny, int64_t B, int64_t M,
    int64_t D, int metric, int64_t self_offset, scalar_t* __restrict__ dist_ap,
    scalar_t* __restrict__ dist_an, int64_t* __restrict__ p_index, int64_t* __restrict__ n_index) {
  __shared__ scalar_t As[kBK][kTM];
  __shared__ scalar_t Bs[kBK][kTN];
  __shared__ scalar_t Ds[kTM][kTN + 1];
  __shared__ int64_t Ls[kTN];
  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int64_t a0 = int64_t(blockIdx.x) * kTM;
  // scan state, held by threads tid < kTM for anchor a0 + tid
  const int64_t my_a = a0 + tid;
  const bool scanner = tid < kTM && my_a < B;
  const int64_t my_label = scanner ? lx[my_a] : 0;
  const int64_t my_self = (scanner && self_offset >= 0) ? my_a + self_offset : -1;
  scalar_t best_p = 0, best_n = 0;
  int64_t jp = -1, jn = -1;
  const scalar_t sq_clamp = scalar_t(kSqClamp), eps = scalar_t(kNormEps);

  for (int64_t c0 = 0; c0 < M; c0 += kTN) {
    scalar_t acc[2][2] = {{0, 0}, {0, 0}};
    for (int64_t k0 = 0; k0 < D; k0 += kBK) {
      for (int e = tid; e < kBK * kTM; e += kThreads) {
        const int rr = e / kBK, kk = e % kBK;
        const int64_t a = a0 + rr, k = k0 + kk;
        As[kk][rr] = (a < B && k < D) ? x[a * sx0 + k * sx1] : scalar_t(0);
        const int64_t c = c0 + rr;
        Bs[kk][rr] = (c < M && k < D) ? y[c * sy0 + k * sy1] : scalar_t(0);
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kBK; ++kk) {
        const scalar_t a_0 = As[kk][2 * ty], a_1 = As[kk][2 * ty + 1];
        const scalar_t b_0 = Bs[kk][2 * tx], b_1 = Bs[kk][2 * tx + 1];
        acc[0][0] += a_0 * b_0;
        acc[0][1] += a_0 * b_1;
        acc[1][0] += a_1 * b_0;
        acc[1][1] += a_1 * b_1;
      }
      __syncthreads();
    }
#pragma unroll
    for (int u = 0; u < 2; ++u) {
#pragma unroll
      for (int v = 0; v < 2; ++v) {
        const int rr = 2 * ty + u, cc = 2 * tx + v;
        const int64_t a = a0 + rr, c = c0 + cc;
        scalar_t d = 0;
        if (a < B && c < M) {
          if (metric == kCosine) {
            const scalar_t ia = scalar_t(1) / fmax(sqrt(nx[a]), eps);
            const scalar_t ic = scalar_t(1) / fmax(sqrt(ny[c]), eps);
            d = scalar_t(1) - acc[u][v] * ia * ic;
          } else {
            const scalar_t sq = nx[a] + ny[c] - scalar_t(2) * acc[u][v];
            d = metric == kEuclidean ? sqrt(fmax(sq, sq_clamp)) : fmax(sq, scalar_t(0));
          }
        }
        Ds[rr][cc] = d;
      }
    }
    if (tid < kTN) Ls[tid] = (c0 + tid < M) ? ly[c0 + tid] : 0;
    __syncthreads();
    if (scanner) {
      const int64_t n_here = (M - c0) < kTN ? (M - c0) : kTN;
      for (int cc = 0; cc < n_here; ++cc) {
        const int64_t j = c0 + cc;
        const scalar_t d = Ds[tid][cc];
        if (Ls[cc] == my_label) {
          if (j != my_self && (jp < 0 || d > best_p)) best_p = d, jp = j;
        } else if (jn < 0 || d < best_n) {
          best_n = d, jn = j;
        }
      }
    }
    __syncthreads();
  }
  if (scanner) {
    dist_ap[my_a] = jp >= 0 ? best_p : scalar_t(0);
    dist_an[my_a] = jn >= 0 ? best_n : scalar_t(0);
    p_index[my_a] = jp;
    n_index[my_a] = jn;
  }
}

// One block per anchor: coefficients of its two pairs (coef [B, 2, 4], cand [B, 2]) and grad_x[i].
template <typename scalar_t>
__global__ void batch_hard_coef_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, const scalar_t* __restrict__ gap,
    const scalar_t* __restrict__ gan, const scalar_t* __restrict__ dap, const scalar_t* __restrict__ dan,
    const int64_t* __restrict__ pidx, const int64_t* __restrict__ nidx, int64_t M, int64_t D,
    int metric, scalar_t* __restrict__ coef, int64_t* __restrict__ cand, scalar_t* __restrict__ gx) {
  __shared__ scalar_t red[32];
  const int64_t i = blockIdx.x;
  const scalar_t* xi = x + i * D;
  scalar_t c[2][4];
  int64_t js[2];
  for (int kind = 0; kind < 2; ++kind) {
    int64_t j = kind == 0 ? pidx[i] : nidx[i];
    const scalar_t g = kind == 0 ? gap[i] : gan[i];
    const scalar_t dist = kind == 0 ? dap[i] : dan[i];
    const bool ok = j >= 0 && j < M && g != scalar_t(0);
    js[kind] = ok ? j : -1;
    for (int t = 0; t < 4; ++t) c[kind][t] = 0;
    if (!ok) continue;  // uniform across the block
    const scalar_t* yj = y + j * D;
    if (metric == kCosine) {
      scalar_t xx = 0, yy = 0, xy = 0;
      for (int64_t k = threadIdx.x; k < D; k += blockDim.x) {
        xx += xi[k] * xi[k];
        yy += yj[k] * yj[k];
        xy += xi[k] * yj[k];
      }
      xx = block_sum(xx, red);
      yy = block_sum(yy, red);
      xy = block_sum(xy, red);
      const scalar_t eps = scalar_t(kNormEps);
      const scalar_t nxr = sqrt(xx), nyr = sqrt(yy);
      const scalar_t nxv = fmax(nxr, eps), nyv = fmax(nyr, eps);
      const scalar_t cosv = xy / (nxv * nyv);
      c[kind][0] = nxr >= eps ? g * cosv / (nxv * nxv) : scalar_t(0);
      c[kind][1] = -g / (nxv * nyv);
      c[kind][2] = -g / (nxv * nyv);
      c[kind][3] = nyr >= eps ? g * cosv / (nyv * nyv) : scalar_t(0);
    } else {
      scalar_t s;
      if (metric == kSqEuclidean) {
        s = scalar_t(2) * g;
      } else {
        s = dist > sqrt(scalar_t(kSqClamp)) ? g / dist : scalar_t(0);
      }
      c[kind][0] = s, c[kind][1] = -s, c[kind][2] = -s, c[kind][3] = s;
    }
  }
  if (threadIdx.x == 0) {
    for (int kind = 0; kind < 2; ++kind) {
      cand[2 * i + kind] = js[kind];
      for (int t = 0; t < 4; ++t) coef[8 * i + 4 * kind + t] = c[kind][t];
    }
  }
  const scalar_t* yp = js[0] >= 0 ? y + js[0] * D : nullptr;
  const scalar_t* yn = js[1] >= 0 ? y + js[1] * D : nullptr;
  for (int64_t k = threadIdx.x; k < D; k += blockDim.x) {
    scalar_t v = 0;
    if (yp) v += c[0][0] * xi[k] + c[0][1] * yp[k];
    if (yn) v += c[1][0] * xi[k] + c[1][1] * yn[k];
    gx[i * D + k] = v;
  }
}

// One block per candidate j: grad_y[j] = sum over pairs (i, kind) that chose j, in anchor order.
template <typename scalar_t>
__global__ void batch_hard_grad_ref_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                                           const scalar_t* __restrict__ coef,
                                           const int64_t* __restrict__ cand, int64_t B, int64_t D,
                                           scalar_t* __restrict__ gy) {
  const int64_t j = blockIdx.x;
  const scalar_t* yj = y + j * D;
  for (int64_t k0 = 0; k0 < D; k0 += blockDim.x) {
    const int64_t k = k0 + threadIdx.x;
    scalar_t acc = 0;
    const scalar_t yv = k < D ? yj[k] : scalar_t(0);
    for (int64_t p = 0; p < 2 * B; ++p) {
      if (cand[p] != j) continue;  // same branch for the whole block
      if (k < D) acc += coef[4 * p + 2] * x[(p / 2) * D + k] + coef[4 * p + 3] * yv;
    }
    if (k < D) gy[j * D + k] = acc;
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> batch_hard_mining_fwd_cuda(
    const Tensor& embeddings, const Tensor& labels, const Tensor& ref_embeddings,
    const Tensor& ref_labels, int64_t metric, int64_t self_offset) {
  check_mining_inputs(embeddings, labels, ref_embeddings, ref_labels, metric);
  const int64_t B = embeddings.size(0), D = embeddings.size(1), M = ref_embeddings.size(0);
  STD_TORCH_CHECK(embeddings.is_cuda() && ref_embeddings.is_cuda() && labels.is_cuda() &&
                      ref_labels.is_cuda(), "batch_hard_mining: all tensors must be CUDA tensors");
  const torch::stable::accelerator::DeviceGuard guard(embeddings.get_device_index());
  Tensor lx = torch::stable::contiguous(labels), ly = torch::stable::contiguous(ref_labels);
  auto dist_ap = torch::stable::new_empty(embeddings, {B});
  auto dist_an = torch::stable::new_empty(embeddings, {B});
  auto p_index = torch::stable::empty({B}, ScalarType::Long, std::nullopt, embeddings.device());
  auto n_index = torch::stable::empty({B}, ScalarType::Long, std::nullopt, embeddings.device());
  if (B == 0) return {dist_ap, dist_an, p_index, n_index};
  auto norms = torch::stable::new_empty(embeddings, {B + M});
  auto stream = current_stream(embeddings, "batch_hard_mining_fwd");
  REIDKERN_DISPATCH_FLOATING(embeddings, "batch_hard_mining_fwd", [&] {
    const scalar_t* xp = static_cast<const scalar_t*>(embeddings.const_data_ptr());
    const scalar_t* yp = static_cast<const scalar_t*>(ref_embeddings.const_data_ptr());
    scalar_t* np = static_cast<scalar_t*>(norms.mutable_data_ptr());
    sq_norms_kernel<scalar_t><<<static_cast<unsigned>(B), 128, 0, stream>>>(
        xp, embeddings.stride(0), embeddings.stride(1), D, np);
    if (M > 0) {
      sq_norms_kernel<scalar_t><<<static_cast<unsigned>(M), 128, 0, stream>>>(
          yp, ref_embeddings.stride(0), ref_embeddings.stride(1), D, np + B);
    }
    const unsigned blocks = static_cast<unsigned>((B + kTM - 1) / kTM);
    batch_hard_fwd_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        xp, embeddings.stride(0), embeddings.stride(1), yp, ref_embeddings.stride(0),
        ref_embeddings.stride(1), lx.const_data_ptr<int64_t>(), ly.const_data_ptr<int64_t>(), np,
        np + B, B, M, D, static_cast<int>(metric), self_offset,
        static_cast<scalar_t*>(dist_ap.mutable_data_ptr()),
        static_cast<scalar_t*>(dist_an.mutable_data_ptr()), p_index.mutable_data_ptr<int64_t>(),
        n_index.mutable_data_ptr<int64_t>());
  });
  check_launch("batch_hard_mining_fwd");
  return {dist_ap, dist_an, p_index, n_index};
}

std::tuple<Tensor, Tensor> batch_hard_mining_bwd_cuda(
    const Tensor& grad_dist_ap, const Tensor& grad_dist_an, const Tensor& embeddings,
    const Tensor& ref_embeddings, const Tensor& dist_ap, const Tensor& dist_an,
    const Tensor& p_index, const Tensor& n_index, int64_t metric) {
  check_mining_backward_inputs(grad_dist_ap, grad_dist_an, embeddings, ref_embeddings, dist_ap,
                               dist_an, p_index, n_index);
  const int64_t B = embeddings.size(0), D = embeddings.size(1), M = ref_embeddings.size(0);
  const torch::stable::accelerator::DeviceGuard guard(embeddings.get_device_index());
  Tensor x = torch::stable::contiguous(embeddings), y = torch::stable::contiguous(ref_embeddings);
  Tensor gap = torch::stable::contiguous(grad_dist_ap), gan = torch::stable::contiguous(grad_dist_an);
  Tensor dap = torch::stable::contiguous(dist_ap), dan = torch::stable::contiguous(dist_an);
  Tensor pidx = torch::stable::contiguous(p_index), nidx = torch::stable::contiguous(n_index);
  auto grad_x = torch::stable::new_zeros(x, {B, D});
  auto grad_y = torch::stable::new_zeros(y, {M, D});
  if (B == 0 || M == 0) return {grad_x, grad_y};
  auto coef = torch::stable::new_empty(x, {8 * B});
  auto cand = torch::stable::empty({2 * B}, ScalarType::Long, std::nullopt, x.device());
  auto stream = current_stream(x, "batch_hard_mining_bwd");
  REIDKERN_DISPATCH_FLOATING(x, "batch_hard_mining_bwd", [&] {
    const scalar_t* xp = static_cast<const scalar_t*>(x.const_data_ptr());
    const scalar_t* yp = static_cast<const scalar_t*>(y.const_data_ptr());
    scalar_t* cp = static_cast<scalar_t*>(coef.mutable_data_ptr());
    int64_t* candp = cand.mutable_data_ptr<int64_t>();
    batch_hard_coef_kernel<scalar_t><<<static_cast<unsigned>(B), 128, 0, stream>>>(
        xp, yp, static_cast<const scalar_t*>(gap.const_data_ptr()),
        static_cast<const scalar_t*>(gan.const_data_ptr()),
        static_cast<const scalar_t*>(dap.const_data_ptr()),
        static_cast<const scalar_t*>(dan.const_data_ptr()), pidx.const_data_ptr<int64_t>(),
        nidx.const_data_ptr<int64_t>(), M, D, static_cast<int>(metric), cp, candp,
        static_cast<scalar_t*>(grad_x.mutable_data_ptr()));
    batch_hard_grad_ref_kernel<scalar_t><<<static_cast<unsigned>(M), 128, 0, stream>>>(
        xp, yp, cp, candp, B, D, static_cast<scalar_t*>(grad_y.mutable_data_ptr()));
  });
  check_launch("batch_hard_mining_bwd");
  return {grad_x, grad_y};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CUDA, m) {
  m.impl("batch_hard_mining_fwd", TORCH_BOX(&batch_hard_mining_fwd_cuda));
  m.impl("batch_hard_mining_bwd", TORCH_BOX(&batch_hard_mining_bwd_cuda));
}

}  // namespace reidkern

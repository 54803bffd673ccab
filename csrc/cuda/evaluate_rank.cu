// CUDA kernel of reidkern::evaluate_rank: one thread block per query, no sort at all.
// The block walks the gallery in tiles; the positives found in a tile are parked in shared memory
// and, for each, the block counts the valid gallery entries ranked ahead of it (distance, then
// index: the stable-sort order) and the positives among them. With r = entries ahead and k =
// positives ahead, that positive adds (k+1)/(r+1) to AP; the first hit is min r, INP = P/(max r+1).
// Cost per query: O(P * G / threads) time, O(threads) shared memory. Non-finite distances are
// flagged with first_hit = -2.
#include "evaluate_rank.h"
#include "cuda/cuda_utils.h"

namespace reidkern {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void evaluate_rank_kernel(const scalar_t* __restrict__ dist, int64_t s0, int64_t s1,
                                     const int64_t* __restrict__ q_pids,
                                     const int64_t* __restrict__ g_pids,
                                     const int64_t* __restrict__ q_camids,
                                     const int64_t* __restrict__ g_camids, int64_t num_g,
                                     bool trapezoid, int64_t* first_hit, double* ap_out,
                                     double* inp_out) {
  __shared__ scalar_t s_dist[kThreads];
  __shared__ int64_t s_index[kThreads];
  __shared__ unsigned long long s_ahead[kThreads];      // valid entries ahead of each positive
  __shared__ unsigned long long s_pos_ahead[kThreads];  // positives ahead of each positive
  __shared__ int s_count;
  __shared__ int s_nonfinite;

  const int64_t i = blockIdx.x;
  const int tid = threadIdx.x;
  const scalar_t* row = dist + i * s0;
  const int64_t qp = q_pids[i], qc = q_camids[i];

  if (tid == 0) s_nonfinite = 0;
  double ap = 0.0;  // thread 0 accumulates
  int64_t num_pos = 0, first = -1, last = -1;

  for (int64_t base = 0; base < num_g; base += kThreads) {
    if (tid == 0) s_count = 0;
    __syncthreads();
    const int64_t j = base + tid;
    if (j < num_g && !isfinite(static_cast<double>(row[j * s1]))) s_nonfinite = 1;
    if (j < num_g && g_pids[j] == qp && g_camids[j] != qc) {
      const int slot = atomicAdd(&s_count, 1);
      s_dist[slot] = row[j * s1];
      s_index[slot] = j;
      s_ahead[slot] = 0;
      s_pos_ahead[slot] = 0;
    }
    __syncthreads();
    const int m = s_count;
    __syncthreads();  // everyone has read s_count before thread 0 resets it
    if (m == 0) continue;
    for (int p = 0; p < m; ++p) {
      const scalar_t dp = s_dist[p];
      const int64_t jp = s_index[p];
      unsigned long long ahead = 0, pos_ahead = 0;
      for (int64_t jj = tid; jj < num_g; jj += kThreads) {
        const int64_t gp = g_pids[jj];
        if (gp == qp && g_camids[jj] == qc) continue;  // junk: same pid, same camera
        const scalar_t d = row[jj * s1];
        if (d < dp || (d == dp && jj < jp)) {
          ++ahead;
          pos_ahead += (gp == qp);
        }
      }
      atomicAdd(&s_ahead[p], ahead);
      atomicAdd(&s_pos_ahead[p], pos_ahead);
    }
    __syncthreads();
    if (tid == 0) {
      for (int p = 0; p < m; ++p) {
        const double r = double(s_ahead[p]), k = double(s_pos_ahead[p]);
        const double precision = (k + 1.0) / (r + 1.0);
        if (trapezoid) {
          ap += 0.5 * ((r == 0.0 ? 1.0 : k / r) + precision);
        } else {
          ap += precision;
        }
        const int64_t rank = static_cast<int64_t>(s_ahead[p]);
        first = (first < 0 || rank < first) ? rank : first;
        last = rank > last ? rank : last;
      }
      num_pos += m;
    }
    __syncthreads();
  }
  __syncthreads();
  if (tid == 0) {
    first_hit[i] = s_nonfinite ? -2 : (num_pos > 0 ? first : -1);
    ap_out[i] = num_pos > 0 ? ap / double(num_pos) : 0.0;
    inp_out[i] = num_pos > 0 ? double(num_pos) / double(last + 1) : 0.0;
  }
}

std::tuple<Tensor, Tensor, Tensor> evaluate_rank_cuda(const Tensor& distmat, const Tensor& q_pids,
                                                      const Tensor& g_pids, const Tensor& q_camids,
                                                      const Tensor& g_camids, bool trapezoid) {
  check_rank_inputs(distmat, q_pids, g_pids, q_camids, g_camids);
  const int64_t Q = distmat.size(0), G = distmat.size(1);
  const torch::stable::accelerator::DeviceGuard guard(distmat.get_device_index());
  auto first_hit = torch::stable::empty({Q}, ScalarType::Long, std::nullopt, distmat.device());
  auto all_ap = torch::stable::empty({Q}, ScalarType::Double, std::nullopt, distmat.device());
  auto all_inp = torch::stable::empty({Q}, ScalarType::Double, std::nullopt, distmat.device());
  if (Q == 0) return {first_hit, all_ap, all_inp};
  const cudaStream_t stream = current_stream(distmat, "evaluate_rank");
  REIDKERN_DISPATCH_FLOATING(distmat, "evaluate_rank", [&] {
    evaluate_rank_kernel<scalar_t><<<static_cast<unsigned>(Q), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(distmat.const_data_ptr()), distmat.stride(0),
        distmat.stride(1), q_pids.const_data_ptr<int64_t>(), g_pids.const_data_ptr<int64_t>(),
        q_camids.const_data_ptr<int64_t>(), g_camids.const_data_ptr<int64_t>(), G, trapezoid,
        first_hit.mutable_data_ptr<int64_t>(), all_ap.mutable_data_ptr<double>(),
        all_inp.mutable_data_ptr<double>());
  });
  check_launch("evaluate_rank");
  return {first_hit, all_ap, all_inp};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CUDA, m) {
  m.impl("evaluate_rank", TORCH_BOX(&evaluate_rank_cuda));
}

}  // namespace reidkern

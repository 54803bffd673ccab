// CUDA kernels of reidkern::knn: for each row of x [M, D], the k nearest rows of y [Ny, D] by the
// exact float64 squared Euclidean distance sum_d (x_d - y_d)^2 (difference form, summed in d order
// with separately rounded multiply and add, i.e. the same bits as the CPU kernel), ties by index,
// and the row maximum over all of y.
//
// knn_partial_kernel: a block takes kRows rows and one slice of the columns; the slice is walked in
// tiles of kThreads columns (one per thread), the features staged through shared memory in chunks
// of kChunk dimensions (coalesced loads). Each thread keeps, per row, a sorted list of its k best
// (columns arrive in increasing index order, so a tie never displaces an earlier entry) and its
// maximum; both go to a scratch buffer.
// knn_merge_kernel: one block per row merges the kThreads * splits sorted lists by repeated
// block-wide minimum of the list heads ((distance, index) order), and reduces the maxima.
// Rows are processed in chunks so the scratch stays under ~512 MB.
#include "knn.h"
#include "cuda/cuda_utils.h"

#include <math_constants.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>

namespace reidkern {
namespace {

constexpr int kThreads = 128;
constexpr int kRows = 4;
constexpr int kChunk = 32;
constexpr int kSplits = 4;

template <typename T, int KMAX>
__global__ void knn_partial_kernel(const T* __restrict__ x, const T* __restrict__ y, int64_t row0,
                                   int64_t rows, int64_t ny, int64_t dim, int k,
                                   double* __restrict__ cand_d, int64_t* __restrict__ cand_i,
                                   double* __restrict__ part_max) {
  __shared__ double xs[kRows][kChunk];
  __shared__ double ys[kThreads][kChunk + 1];
  const int tid = threadIdx.x;
  const int64_t r_local0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int split = blockIdx.y;
  const int64_t per_split = (ny + kSplits - 1) / kSplits;
  const int64_t c_begin = split * per_split;
  const int64_t c_end = c_begin + per_split < ny ? c_begin + per_split : ny;

  double best_d[kRows][KMAX];
  int64_t best_i[kRows][KMAX];
  int count[kRows];
  double mx[kRows];
  for (int r = 0; r < kRows; ++r) {
    count[r] = 0;
    mx[r] = -DBL_MAX;
  }
  for (int64_t t0 = c_begin; t0 < c_end; t0 += kThreads) {
    const int64_t j = t0 + tid;
    double acc[kRows];
    for (int r = 0; r < kRows; ++r) acc[r] = 0.0;
    for (int64_t d0 = 0; d0 < dim; d0 += kChunk) {
      __syncthreads();
      // Stage x rows and the y tile (chunk of dimensions) in shared memory.
      for (int e = tid; e < kRows * kChunk; e += kThreads) {
        const int r = e / kChunk, dd = e % kChunk;
        const int64_t row = row0 + r_local0 + r;
        xs[r][dd] = (r_local0 + r < rows && d0 + dd < dim) ? static_cast<double>(x[row * dim + d0 + dd]) : 0.0;
      }
      for (int e = tid; e < kThreads * kChunk; e += kThreads) {
        const int c = e / kChunk, dd = e % kChunk;
        const int64_t col = t0 + c;
        ys[c][dd] = (col < c_end && d0 + dd < dim) ? static_cast<double>(y[col * dim + d0 + dd]) : 0.0;
      }
      __syncthreads();
      const int dlim = dim - d0 < kChunk ? static_cast<int>(dim - d0) : kChunk;
      for (int dd = 0; dd < dlim; ++dd) {
        const double yv = ys[tid][dd];
        for (int r = 0; r < kRows; ++r) {
          const double t = xs[r][dd] - yv;
          acc[r] = __dadd_rn(acc[r], __dmul_rn(t, t));  // no contraction: CPU-identical bits
        }
      }
    }
    if (j < c_end) {
      for (int r = 0; r < kRows; ++r) {
        const double v = acc[r];
        mx[r] = v > mx[r] ? v : mx[r];
        if (count[r] < k || v < best_d[r][count[r] - 1]) {
          int p = count[r] < k ? count[r]++ : k - 1;
          while (p > 0 && best_d[r][p - 1] > v) {
            best_d[r][p] = best_d[r][p - 1];
            best_i[r][p] = best_i[r][p - 1];
            --p;
          }
          best_d[r][p] = v;
          best_i[r][p] = j;
        }
      }
    }
  }
  const int64_t lists = static_cast<int64_t>(kSplits) * kThreads;
  const int64_t list = static_cast<int64_t>(split) * kThreads + tid;
  for (int r = 0; r < kRows; ++r) {
    const int64_t rl = r_local0 + r;
    if (rl >= rows) break;
    double* od = cand_d + (rl * lists + list) * k;
    int64_t* oi = cand_i + (rl * lists + list) * k;
    for (int t = 0; t < k; ++t) {
      od[t] = t < count[r] ? best_d[r][t] : CUDART_INF;
      oi[t] = t < count[r] ? best_i[r][t] : INT64_MAX;
    }
    part_max[rl * lists + list] = mx[r];
  }
}

__global__ void knn_merge_kernel(const double* __restrict__ cand_d, const int64_t* __restrict__ cand_i,
                                 const double* __restrict__ part_max, int64_t row0, int64_t rows,
                                 int k, int64_t offset, double* __restrict__ out_d,
                                 int64_t* __restrict__ out_i, double* __restrict__ out_max) {
  constexpr int kLists = kSplits * kThreads;
  constexpr int kPer = kLists / kThreads;  // lists per thread
  __shared__ double s_d[kThreads];
  __shared__ int64_t s_i[kThreads];
  __shared__ int s_owner[kThreads];
  __shared__ double s_m[kThreads];
  const int64_t rl = blockIdx.x;
  const int tid = threadIdx.x;
  const double* cd = cand_d + rl * kLists * k;
  const int64_t* ci = cand_i + rl * kLists * k;
  int head[kPer];
  for (int p = 0; p < kPer; ++p) head[p] = 0;
  double m = -DBL_MAX;
  for (int p = 0; p < kPer; ++p) {
    const double v = part_max[rl * kLists + tid + p * kThreads];
    m = v > m ? v : m;
  }
  s_m[tid] = m;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) s_m[tid] = s_m[tid + s] > s_m[tid] ? s_m[tid + s] : s_m[tid];
    __syncthreads();
  }
  if (tid == 0) out_max[row0 + rl] = s_m[0] == -DBL_MAX ? -CUDART_INF : s_m[0];
  for (int t = 0; t < k; ++t) {
    // This thread's best head among its lists.
    double bd = CUDART_INF;
    int64_t bi = INT64_MAX;
    int bo = -1;
    for (int p = 0; p < kPer; ++p) {
      if (head[p] >= k) continue;
      const int64_t list = tid + p * kThreads;
      const double d = cd[list * k + head[p]];
      const int64_t i = ci[list * k + head[p]];
      if (d < bd || (d == bd && i < bi)) {
        bd = d;
        bi = i;
        bo = p;
      }
    }
    s_d[tid] = bd;
    s_i[tid] = bi;
    s_owner[tid] = tid;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (tid < s) {
        const double d2 = s_d[tid + s];
        const int64_t i2 = s_i[tid + s];
        if (d2 < s_d[tid] || (d2 == s_d[tid] && i2 < s_i[tid])) {
          s_d[tid] = d2;
          s_i[tid] = i2;
          s_owner[tid] = s_owner[tid + s];
        }
      }
      __syncthreads();
    }
    const int owner = s_owner[0];
    const double wd = s_d[0];
    const int64_t wi = s_i[0];
    __syncthreads();
    if (tid == 0) {
      const bool valid = wi != INT64_MAX;
      out_d[(row0 + rl) * k + t] = valid ? wd : CUDART_INF;
      out_i[(row0 + rl) * k + t] = valid ? wi + offset : -1;
    }
    if (tid == owner && bo >= 0) ++head[bo];
  }
}

template <typename T, int KMAX>
void launch(const T* x, const T* y, int64_t M, int64_t ny, int64_t dim, int k, int64_t offset,
            double* cd, int64_t* ci, double* pm, int64_t chunk, double* od, int64_t* oi, double* om,
            cudaStream_t stream) {
  for (int64_t r0 = 0; r0 < M; r0 += chunk) {
    const int64_t rows = std::min(chunk, M - r0);
    dim3 grid(static_cast<unsigned>((rows + kRows - 1) / kRows), kSplits);
    knn_partial_kernel<T, KMAX><<<grid, kThreads, 0, stream>>>(x, y, r0, rows, ny, dim, k, cd, ci, pm);
    knn_merge_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(cd, ci, pm, r0, rows, k,
                                                                          offset, od, oi, om);
  }
}

std::tuple<Tensor, Tensor, Tensor> knn_cuda(const Tensor& x, const Tensor& y, int64_t k,
                                            int64_t index_offset) {
  check_knn_inputs(x, y);
  STD_TORCH_CHECK(k >= 1 && k <= 256, "knn (CUDA): k must be in [1, 256]; use backend='triton' or 'cpp'");
  const torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  const int64_t M = x.size(0), ny = y.size(0), dim = x.size(1);
  auto dist = torch::stable::empty({M, k}, ScalarType::Double, std::nullopt, x.device());
  auto idx = torch::stable::empty({M, k}, ScalarType::Long, std::nullopt, x.device());
  auto rmax = torch::stable::empty({M}, ScalarType::Double, std::nullopt, x.device());
  if (M == 0) return {dist, idx, rmax};
  const int64_t lists = static_cast<int64_t>(kSplits) * kThreads;
  const int64_t per_row = lists * k * 16 + lists * 8;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(M, (int64_t(512) << 20) / per_row));
  auto cand_d = torch::stable::empty({chunk * lists * k}, ScalarType::Double, std::nullopt, x.device());
  auto cand_i = torch::stable::empty({chunk * lists * k}, ScalarType::Long, std::nullopt, x.device());
  auto part_max = torch::stable::empty({chunk * lists}, ScalarType::Double, std::nullopt, x.device());
  const cudaStream_t stream = current_stream(x, "knn");
  double* cd = cand_d.mutable_data_ptr<double>();
  int64_t* ci = cand_i.mutable_data_ptr<int64_t>();
  double* pm = part_max.mutable_data_ptr<double>();
  double* od = dist.mutable_data_ptr<double>();
  int64_t* oi = idx.mutable_data_ptr<int64_t>();
  double* om = rmax.mutable_data_ptr<double>();
  const int kk = static_cast<int>(k);
  REIDKERN_DISPATCH_FLOATING(x, "knn", [&] {
    const scalar_t* xp = static_cast<const scalar_t*>(x.const_data_ptr());
    const scalar_t* yp = static_cast<const scalar_t*>(y.const_data_ptr());
    if (k <= 32) {
      launch<scalar_t, 32>(xp, yp, M, ny, dim, kk, index_offset, cd, ci, pm, chunk, od, oi, om, stream);
    } else if (k <= 64) {
      launch<scalar_t, 64>(xp, yp, M, ny, dim, kk, index_offset, cd, ci, pm, chunk, od, oi, om, stream);
    } else if (k <= 128) {
      launch<scalar_t, 128>(xp, yp, M, ny, dim, kk, index_offset, cd, ci, pm, chunk, od, oi, om, stream);
    } else {
      launch<scalar_t, 256>(xp, yp, M, ny, dim, kk, index_offset, cd, ci, pm, chunk, od, oi, om, stream);
    }
  });
  check_launch("knn");
  return {dist, idx, rmax};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CUDA, m) {
  m.impl("knn", TORCH_BOX(&knn_cuda));
}

}  // namespace reidkern

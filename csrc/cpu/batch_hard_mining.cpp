// CPU kernels of reidkern::batch_hard_mining_fwd and _bwd.
//
// Forward: anchors are processed in row tiles. For a tile, the Gram block X_tile · Rᵀ comes from
// torch's matmul (BLAS), then each anchor row is turned into distances and mined in one pass over
// the candidates: hardest positive (max distance, same label, not the anchor itself) and hardest
// negative (min distance, other label), ties to the lowest candidate index. Nothing B x M survives
// the tile (no distance matrix, no masks); the tile is at most kTileElems values.
//
// Backward: only the 2B chosen pairs. For pair (i, j) with upstream gradient g,
//   grad_x[i] += alpha * x_i + beta * y_j,   grad_y[j] += gamma * x_i + delta * y_j,
// with (alpha, beta, gamma, delta) from the metric (see pair_coefficients). grad_x is written per
// anchor; grad_y is accumulated per column chunk so that no two threads touch the same element and
// the summation order is fixed (deterministic).
#include "batch_hard_mining.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace reidkern {
namespace {

// Metric codes, kSqClamp and kNormEps: csrc/metric.h.
constexpr int64_t kTileElems = int64_t(1) << 20;  // Gram values per tile (4 MiB in float32)

template <typename scalar_t>
void sum_squares(const scalar_t* x, int64_t n, int64_t d, std::vector<scalar_t>& out) {
  out.assign(n, scalar_t(0));
  torch::stable::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* row = x + i * d;
      scalar_t s = 0;
      for (int64_t k = 0; k < d; ++k) s += row[k] * row[k];
      out[i] = s;
    }
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor> batch_hard_mining_fwd_cpu(
    const Tensor& embeddings, const Tensor& labels, const Tensor& ref_embeddings,
    const Tensor& ref_labels, int64_t metric, int64_t self_offset) {
  check_mining_inputs(embeddings, labels, ref_embeddings, ref_labels, metric);
  const int64_t B = embeddings.size(0), D = embeddings.size(1), M = ref_embeddings.size(0);
  Tensor x = torch::stable::contiguous(embeddings);
  Tensor y = torch::stable::contiguous(ref_embeddings);
  Tensor lx = torch::stable::contiguous(labels);
  Tensor ly = torch::stable::contiguous(ref_labels);
  auto dist_ap = torch::stable::new_empty(x, {B});
  auto dist_an = torch::stable::new_empty(x, {B});
  auto p_index = torch::stable::empty({B}, ScalarType::Long, std::nullopt, x.device());
  auto n_index = torch::stable::empty({B}, ScalarType::Long, std::nullopt, x.device());
  if (B == 0) return {dist_ap, dist_an, p_index, n_index};
  int64_t* pi = p_index.mutable_data_ptr<int64_t>();
  int64_t* ni = n_index.mutable_data_ptr<int64_t>();
  const int64_t* lxp = lx.const_data_ptr<int64_t>();
  const int64_t* lyp = ly.const_data_ptr<int64_t>();
  REIDKERN_DISPATCH_FLOATING(x, "batch_hard_mining_fwd", [&] {
    scalar_t* ap = static_cast<scalar_t*>(dist_ap.mutable_data_ptr());
    scalar_t* an = static_cast<scalar_t*>(dist_an.mutable_data_ptr());
    const scalar_t* xp = static_cast<const scalar_t*>(x.const_data_ptr());
    const scalar_t* yp = static_cast<const scalar_t*>(y.const_data_ptr());
    std::vector<scalar_t> nx, ny;
    sum_squares(xp, B, D, nx);
    sum_squares(yp, M, D, ny);
    if (metric == kCosine) {  // keep 1 / max(|x|, eps) instead of |x|^2
      for (auto* v : {&nx, &ny})
        for (auto& s : *v) s = scalar_t(1) / std::max(std::sqrt(s), scalar_t(kNormEps));
    }
    if (M == 0) {
      for (int64_t i = 0; i < B; ++i) ap[i] = an[i] = scalar_t(0), pi[i] = ni[i] = -1;
      return;
    }
    const Tensor yt = torch::stable::transpose(y, 0, 1);
    const int64_t tile = std::max<int64_t>(1, std::min<int64_t>(B, kTileElems / M));
    const scalar_t sq_clamp = scalar_t(kSqClamp);
    for (int64_t t0 = 0; t0 < B; t0 += tile) {
      const int64_t rows = std::min(tile, B - t0);
      Tensor xt = torch::stable::narrow(x, 0, t0, rows);
      Tensor gram = torch::stable::contiguous(torch::stable::matmul(xt, yt));  // [rows, M]
      const scalar_t* g = static_cast<const scalar_t*>(gram.const_data_ptr());
      torch::stable::parallel_for(0, rows, 4, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t a = t0 + r;
          const int64_t self_j = self_offset >= 0 ? a + self_offset : -1;
          const int64_t la = lxp[a];
          const scalar_t na = nx[a];
          const scalar_t* grow = g + r * M;
          scalar_t best_p = 0, best_n = 0;
          int64_t jp = -1, jn = -1;
          for (int64_t j = 0; j < M; ++j) {
            scalar_t d;
            if (metric == kCosine) {
              d = scalar_t(1) - grow[j] * na * ny[j];
            } else {
              const scalar_t sq = na + ny[j] - scalar_t(2) * grow[j];
              d = metric == kEuclidean ? std::sqrt(std::max(sq, sq_clamp)) : std::max(sq, scalar_t(0));
            }
            if (lyp[j] == la) {
              if (j != self_j && (jp < 0 || d > best_p)) best_p = d, jp = j;
            } else if (jn < 0 || d < best_n) {
              best_n = d, jn = j;
            }
          }
          ap[a] = jp >= 0 ? best_p : scalar_t(0);
          an[a] = jn >= 0 ? best_n : scalar_t(0);
          pi[a] = jp;
          ni[a] = jn;
        }
      });
    }
  });
  return {dist_ap, dist_an, p_index, n_index};
}

// Coefficients of d(dist(x, y))/dx = alpha' x + beta' y and d/dy = gamma' x + delta' y, times g.
template <typename scalar_t>
void pair_coefficients(const scalar_t* xi, const scalar_t* yj, int64_t D, scalar_t dist, scalar_t g,
                       int64_t metric, scalar_t* c) {
  if (metric == kCosine) {
    scalar_t xx = 0, yy = 0, xy = 0;
    for (int64_t k = 0; k < D; ++k) xx += xi[k] * xi[k], yy += yj[k] * yj[k], xy += xi[k] * yj[k];
    const scalar_t eps = scalar_t(kNormEps);
    const scalar_t nxr = std::sqrt(xx), nyr = std::sqrt(yy);
    const scalar_t nx = std::max(nxr, eps), ny = std::max(nyr, eps);
    const scalar_t cos = xy / (nx * ny);
    const scalar_t sx = nxr >= eps ? scalar_t(1) : scalar_t(0);  // clamp_min passes the gradient
    const scalar_t sy = nyr >= eps ? scalar_t(1) : scalar_t(0);
    // d = 1 - cos: dd/dx = -(y/ny - sx*cos*x/nx)/nx, dd/dy = -(x/nx - sy*cos*y/ny)/ny
    c[0] = g * sx * cos / (nx * nx);
    c[1] = -g / (nx * ny);
    c[2] = -g / (nx * ny);
    c[3] = g * sy * cos / (ny * ny);
    return;
  }
  scalar_t s;
  if (metric == kSqEuclidean) {
    s = scalar_t(2) * g;
  } else {  // sqrt(clamp(sq, 1e-12)): no gradient where the clamp was active
    s = dist > std::sqrt(scalar_t(kSqClamp)) ? g / dist : scalar_t(0);
  }
  c[0] = s, c[1] = -s, c[2] = -s, c[3] = s;
}

std::tuple<Tensor, Tensor> batch_hard_mining_bwd_cpu(
    const Tensor& grad_dist_ap, const Tensor& grad_dist_an, const Tensor& embeddings,
    const Tensor& ref_embeddings, const Tensor& dist_ap, const Tensor& dist_an,
    const Tensor& p_index, const Tensor& n_index, int64_t metric) {
  check_mining_backward_inputs(grad_dist_ap, grad_dist_an, embeddings, ref_embeddings, dist_ap,
                               dist_an, p_index, n_index);
  const int64_t B = embeddings.size(0), D = embeddings.size(1), M = ref_embeddings.size(0);
  Tensor x = torch::stable::contiguous(embeddings);
  Tensor y = torch::stable::contiguous(ref_embeddings);
  Tensor gap = torch::stable::contiguous(grad_dist_ap), gan = torch::stable::contiguous(grad_dist_an);
  Tensor dap = torch::stable::contiguous(dist_ap), dan = torch::stable::contiguous(dist_an);
  Tensor pidx = torch::stable::contiguous(p_index), nidx = torch::stable::contiguous(n_index);
  auto grad_y = torch::stable::new_zeros(y, {M, D});
  if (B == 0 || M == 0) return {torch::stable::new_zeros(x, {B, D}), grad_y};
  auto grad_x = torch::stable::new_empty(x, {B, D});  // every row is written below
  REIDKERN_DISPATCH_FLOATING(x, "batch_hard_mining_bwd", [&] {
    const scalar_t* xp = static_cast<const scalar_t*>(x.const_data_ptr());
    const scalar_t* yp = static_cast<const scalar_t*>(y.const_data_ptr());
    const scalar_t* grads[2] = {static_cast<const scalar_t*>(gap.const_data_ptr()),
                                static_cast<const scalar_t*>(gan.const_data_ptr())};
    const scalar_t* dists[2] = {static_cast<const scalar_t*>(dap.const_data_ptr()),
                                static_cast<const scalar_t*>(dan.const_data_ptr())};
    const int64_t* idx[2] = {pidx.const_data_ptr<int64_t>(), nidx.const_data_ptr<int64_t>()};
    scalar_t* gx = static_cast<scalar_t*>(grad_x.mutable_data_ptr());
    scalar_t* gy = static_cast<scalar_t*>(grad_y.mutable_data_ptr());
    // (anchor, kind) -> candidate (-1: no gradient) and its four coefficients.
    std::vector<int64_t> cand(2 * B);
    std::vector<scalar_t> coef(8 * B);
    torch::stable::parallel_for(0, B, 8, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* xrow = gx + i * D;
        const scalar_t* xi = xp + i * D;
        std::fill(xrow, xrow + D, scalar_t(0));
        for (int k = 0; k < 2; ++k) {
          const int64_t j = idx[k][i];
          const scalar_t g = grads[k][i];
          cand[2 * i + k] = -1;
          if (j < 0 || j >= M || g == scalar_t(0)) continue;
          scalar_t* c = &coef[8 * i + 4 * k];
          const scalar_t* yj = yp + j * D;
          pair_coefficients(xi, yj, D, dists[k][i], g, metric, c);
          cand[2 * i + k] = j;
          for (int64_t t = 0; t < D; ++t) xrow[t] += c[0] * xi[t] + c[1] * yj[t];
        }
      }
    });
    // grad_y: column chunks in parallel, anchors in order inside each (no races, fixed order).
    constexpr int64_t kChunk = 64;
    const int64_t chunks = (D + kChunk - 1) / kChunk;
    torch::stable::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      const int64_t c0 = begin * kChunk, c1 = std::min(D, end * kChunk);
      for (int64_t p = 0; p < 2 * B; ++p) {
        const int64_t j = cand[p];
        if (j < 0) continue;
        const scalar_t* c = &coef[4 * p];
        const scalar_t* xi = xp + (p / 2) * D;
        const scalar_t* yj = yp + j * D;
        scalar_t* yrow = gy + j * D;
        for (int64_t t = c0; t < c1; ++t) yrow[t] += c[2] * xi[t] + c[3] * yj[t];
      }
    });
  });
  return {grad_x, grad_y};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CPU, m) {
  m.impl("batch_hard_mining_fwd", TORCH_BOX(&batch_hard_mining_fwd_cpu));
  m.impl("batch_hard_mining_bwd", TORCH_BOX(&batch_hard_mining_bwd_cpu));
}

}  // namespace reidkern

// CPU kernels of the sparse steps of k-reciprocal re-ranking (Zhong et al., CVPR 2017):
//  * k_reciprocal_expand: from the initial ranking ranks [N, K >= k1+1] (global indices, nearest
//    first), the expanded k-reciprocal set of every row as sorted unique CSR column lists.
//  * sparse_rows_mean: query expansion, row i <- mean of rows ranks[i, :k2] of a CSR matrix
//    (summed in rank order, then divided by k2, as numpy's mean over axis 0 does).
//  * jaccard_sum_min: s[i, j] = sum_l min(V[i, l], T[j, l]) through an inverted index of T (for
//    each column l, the target rows holding it), kept sparse (only s > 0), summed in l order.
//  * jaccard_rerank: the same sums for a tile of rows, fused with the final mix
//    out = (1 - lambda) (1 - s / (2 - s)) + lambda original, written as a dense float32 tile.
//  * pair_sq_dist: exact float64 squared Euclidean distance (difference form) of listed pairs.
// Everything is O(N k) memory; rows are processed in parallel.
#include "common.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace reidkern {
namespace {

// Writes per-row vectors into CSR tensors.
template <typename V>
std::pair<Tensor, Tensor> to_csr_cols(const std::vector<std::vector<V>>& rows, const Tensor& like) {
  const int64_t n = static_cast<int64_t>(rows.size());
  auto crow = torch::stable::empty({n + 1}, ScalarType::Long, std::nullopt, like.device());
  int64_t* cp = crow.mutable_data_ptr<int64_t>();
  cp[0] = 0;
  for (int64_t i = 0; i < n; ++i) cp[i + 1] = cp[i] + static_cast<int64_t>(rows[i].size());
  auto cols = torch::stable::empty({cp[n]}, ScalarType::Long, std::nullopt, like.device());
  return {crow, cols};
}

// Writes per-row (column, value) lists into CSR tensors (crow, cols, float64 vals).
std::tuple<Tensor, Tensor, Tensor> to_csr(const std::vector<std::vector<std::pair<int64_t, double>>>& rows,
                                          const Tensor& like) {
  auto [crow, cols] = to_csr_cols(rows, like);
  auto vals = torch::stable::empty({cols.size(0)}, ScalarType::Double, std::nullopt, like.device());
  const int64_t* cp = crow.const_data_ptr<int64_t>();
  int64_t* cc = cols.mutable_data_ptr<int64_t>();
  double* cv = vals.mutable_data_ptr<double>();
  const int64_t n = static_cast<int64_t>(rows.size());
  torch::stable::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      int64_t p = cp[i];
      for (const auto& entry : rows[i]) {
        cc[p] = entry.first;
        cv[p++] = entry.second;
      }
    }
  });
  return {crow, cols, vals};
}

void check_ranks(const Tensor& ranks, int64_t need) {
  check_dim(ranks, 2, "ranks");
  check_dtype(ranks, ScalarType::Long, "ranks");
  STD_TORCH_CHECK(ranks.is_contiguous(), "ranks must be contiguous");
  STD_TORCH_CHECK(ranks.size(1) >= need, "ranks needs at least ", need, " columns");
}

std::tuple<Tensor, Tensor> k_reciprocal_expand_cpu(const Tensor& ranks, int64_t k1) {
  STD_TORCH_CHECK(k1 >= 1, "k_reciprocal_expand: k1 must be >= 1");
  check_ranks(ranks, k1 + 1);
  const int64_t N = ranks.size(0), K = ranks.size(1);
  const int64_t* rk = ranks.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < N * K; ++t) {
    STD_TORCH_CHECK(rk[t] >= 0 && rk[t] < N, "ranks holds an index outside [0, N)");
  }
  // round(k1 / 2) with numpy's round-half-to-even.
  const int64_t half = (k1 % 2 == 0) ? k1 / 2 : (((k1 / 2) % 2 == 0) ? k1 / 2 : k1 / 2 + 1);
  auto reciprocal = [&](int64_t i, int64_t k, std::vector<int64_t>& out) {
    out.clear();
    const int64_t* fwd = rk + i * K;
    for (int64_t a = 0; a <= k; ++a) {
      const int64_t j = fwd[a];
      const int64_t* back = rk + j * K;
      for (int64_t b = 0; b <= k; ++b) {
        if (back[b] == i) {
          out.push_back(j);
          break;
        }
      }
    }
  };
  std::vector<std::vector<int64_t>> rows(N);
  torch::stable::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
    std::vector<int64_t> recip, sorted_recip, cand;
    for (int64_t i = b; i < e; ++i) {
      reciprocal(i, k1, recip);
      sorted_recip = recip;
      std::sort(sorted_recip.begin(), sorted_recip.end());
      std::vector<int64_t>& expansion = rows[i];
      expansion = recip;
      for (const int64_t c : recip) {
        reciprocal(c, half, cand);
        int64_t inter = 0;
        for (const int64_t j : cand) {
          inter += std::binary_search(sorted_recip.begin(), sorted_recip.end(), j) ? 1 : 0;
        }
        if (static_cast<double>(inter) > 2.0 / 3.0 * static_cast<double>(cand.size())) {
          expansion.insert(expansion.end(), cand.begin(), cand.end());
        }
      }
      std::sort(expansion.begin(), expansion.end());
      expansion.erase(std::unique(expansion.begin(), expansion.end()), expansion.end());
    }
  });
  auto [crow, cols] = to_csr_cols(rows, ranks);
  const int64_t* cp = crow.const_data_ptr<int64_t>();
  int64_t* colp = cols.mutable_data_ptr<int64_t>();
  torch::stable::parallel_for(0, N, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::copy(rows[i].begin(), rows[i].end(), colp + cp[i]);
  });
  return {crow, cols};
}

void check_csr(const Tensor& crow, const Tensor& cols, const Tensor& vals, const char* name) {
  check_dim(crow, 1, name);
  check_dtype(crow, ScalarType::Long, name);
  check_dtype(cols, ScalarType::Long, name);
  check_dtype(vals, ScalarType::Double, name);
  STD_TORCH_CHECK(crow.is_contiguous() && cols.is_contiguous() && vals.is_contiguous(), name,
                  " must be contiguous");
  STD_TORCH_CHECK(crow.size(0) >= 1, name, ": row pointer must have at least one entry");
  STD_TORCH_CHECK(cols.dim() == 1 && vals.dim() == 1 && cols.size(0) == vals.size(0), name,
                  ": cols and vals must be 1-D of equal length");
  const int64_t* cp = crow.const_data_ptr<int64_t>();
  const int64_t n = crow.size(0) - 1;
  STD_TORCH_CHECK(cp[0] == 0 && cp[n] == cols.size(0), name, ": row pointer does not match nnz");
  for (int64_t i = 0; i < n; ++i) STD_TORCH_CHECK(cp[i] <= cp[i + 1], name, ": row pointer decreases");
}

std::tuple<Tensor, Tensor, Tensor> sparse_rows_mean_cpu(const Tensor& crow, const Tensor& cols,
                                                        const Tensor& vals, const Tensor& ranks,
                                                        int64_t k2) {
  check_csr(crow, cols, vals, "sparse_rows_mean: V");
  STD_TORCH_CHECK(k2 >= 1, "sparse_rows_mean: k2 must be >= 1");
  check_ranks(ranks, k2);
  const int64_t N = crow.size(0) - 1, K = ranks.size(1);
  STD_TORCH_CHECK(ranks.size(0) == N, "sparse_rows_mean: ranks must have one row per row of V");
  const int64_t* cp = crow.const_data_ptr<int64_t>();
  const int64_t* cl = cols.const_data_ptr<int64_t>();
  const double* vl = vals.const_data_ptr<double>();
  const int64_t* rk = ranks.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < N * K; ++t) {
    STD_TORCH_CHECK(rk[t] >= 0 && rk[t] < N, "ranks holds an index outside [0, N)");
  }
  std::vector<std::vector<std::pair<int64_t, double>>> rows(N);
  torch::stable::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
    std::vector<std::pair<int64_t, int64_t>> items;  // (column, position) keeps rank order per column
    for (int64_t i = b; i < e; ++i) {
      items.clear();
      for (int64_t t = 0; t < k2; ++t) {
        const int64_t r = rk[i * K + t];
        for (int64_t p = cp[r]; p < cp[r + 1]; ++p) items.emplace_back(cl[p], p);
      }
      std::stable_sort(items.begin(), items.end(),
                       [](const std::pair<int64_t, int64_t>& a, const std::pair<int64_t, int64_t>& c) {
                         return a.first < c.first;
                       });
      auto& out = rows[i];
      for (size_t a = 0; a < items.size();) {
        size_t z = a;
        double s = 0.0;
        while (z < items.size() && items[z].first == items[a].first) s += vl[items[z++].second];
        out.emplace_back(items[a].first, s / static_cast<double>(k2));
        a = z;
      }
    }
  });
  return to_csr(rows, crow);
}

std::tuple<Tensor, Tensor, Tensor> jaccard_sum_min_cpu(const Tensor& crow, const Tensor& cols,
                                                       const Tensor& vals, const Tensor& t_ptr,
                                                       const Tensor& t_rows, const Tensor& t_vals,
                                                       int64_t num_targets) {
  check_csr(crow, cols, vals, "jaccard_sum_min: V");
  check_csr(t_ptr, t_rows, t_vals, "jaccard_sum_min: inverted index");
  STD_TORCH_CHECK(num_targets >= 0, "jaccard_sum_min: num_targets must be >= 0");
  const int64_t R = crow.size(0) - 1, L = t_ptr.size(0) - 1;
  const int64_t* cp = crow.const_data_ptr<int64_t>();
  const int64_t* cl = cols.const_data_ptr<int64_t>();
  const double* vl = vals.const_data_ptr<double>();
  const int64_t* tp = t_ptr.const_data_ptr<int64_t>();
  const int64_t* tr = t_rows.const_data_ptr<int64_t>();
  const double* tv = t_vals.const_data_ptr<double>();
  for (int64_t p = 0; p < cols.size(0); ++p) {
    STD_TORCH_CHECK(cl[p] >= 0 && cl[p] < L, "jaccard_sum_min: column outside the inverted index");
  }
  for (int64_t p = 0; p < t_rows.size(0); ++p) {
    STD_TORCH_CHECK(tr[p] >= 0 && tr[p] < num_targets, "jaccard_sum_min: target row out of range");
  }
  std::vector<std::vector<std::pair<int64_t, double>>> rows(R);
  const int64_t grain = std::max<int64_t>(1, std::min<int64_t>(256, R / 16));
  torch::stable::parallel_for(0, R, grain, [&](int64_t b, int64_t e) {
    std::vector<double> acc(num_targets, 0.0);
    std::vector<char> seen(num_targets, 0);
    std::vector<int64_t> touched;
    for (int64_t i = b; i < e; ++i) {
      touched.clear();
      for (int64_t p = cp[i]; p < cp[i + 1]; ++p) {
        const int64_t l = cl[p];
        const double v = vl[p];
        for (int64_t q = tp[l]; q < tp[l + 1]; ++q) {
          const int64_t j = tr[q];
          if (!seen[j]) {
            seen[j] = 1;
            touched.push_back(j);
          }
          acc[j] += std::min(v, tv[q]);
        }
      }
      std::sort(touched.begin(), touched.end());
      auto& out = rows[i];
      out.reserve(touched.size());
      for (const int64_t j : touched) {
        out.emplace_back(j, acc[j]);
        acc[j] = 0.0;
        seen[j] = 0;
      }
    }
  });
  return to_csr(rows, crow);
}

Tensor jaccard_rerank_cpu(const Tensor& crow, const Tensor& cols, const Tensor& vals,
                          const Tensor& t_ptr, const Tensor& t_rows, const Tensor& t_vals,
                          const Tensor& original, double lambda_value) {
  check_csr(crow, cols, vals, "jaccard_rerank: V");
  check_csr(t_ptr, t_rows, t_vals, "jaccard_rerank: inverted index");
  check_dim(original, 2, "original");
  check_dtype(original, ScalarType::Double, "original");
  STD_TORCH_CHECK(original.is_contiguous(), "original must be contiguous");
  const int64_t R = crow.size(0) - 1, L = t_ptr.size(0) - 1, T = original.size(1);
  STD_TORCH_CHECK(original.size(0) == R, "jaccard_rerank: original must have one row per row of V");
  const int64_t* cp = crow.const_data_ptr<int64_t>();
  const int64_t* cl = cols.const_data_ptr<int64_t>();
  const double* vl = vals.const_data_ptr<double>();
  const int64_t* tp = t_ptr.const_data_ptr<int64_t>();
  const int64_t* tr = t_rows.const_data_ptr<int64_t>();
  const double* tv = t_vals.const_data_ptr<double>();
  const double* orig = original.const_data_ptr<double>();
  for (int64_t p = 0; p < cols.size(0); ++p) {
    STD_TORCH_CHECK(cl[p] >= 0 && cl[p] < L, "jaccard_rerank: column outside the inverted index");
  }
  for (int64_t p = 0; p < t_rows.size(0); ++p) {
    STD_TORCH_CHECK(tr[p] >= 0 && tr[p] < T, "jaccard_rerank: target row out of range");
  }
  auto out = torch::stable::empty({R, T}, ScalarType::Float, std::nullopt, crow.device());
  float* op = out.mutable_data_ptr<float>();
  const double lam = lambda_value;
  torch::stable::parallel_for(0, R, 4, [&](int64_t b, int64_t e) {
    std::vector<double> acc(T, 0.0);
    for (int64_t i = b; i < e; ++i) {
      for (int64_t p = cp[i]; p < cp[i + 1]; ++p) {
        const int64_t l = cl[p];
        const double v = vl[p];
        for (int64_t q = tp[l]; q < tp[l + 1]; ++q) acc[tr[q]] += std::min(v, tv[q]);
      }
      const double* orow = orig + i * T;
      float* out_row = op + i * T;
      for (int64_t j = 0; j < T; ++j) {
        const double s = acc[j];
        out_row[j] = static_cast<float>((1.0 - s / (2.0 - s)) * (1.0 - lam) + orow[j] * lam);
        acc[j] = 0.0;
      }
    }
  });
  return out;
}

template <typename T>
void pair_sq_dist_impl(const T* x, int64_t D, const int64_t* rows, const int64_t* cols, int64_t P,
                       double* out) {
  torch::stable::parallel_for(0, P, 1024, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const T* a = x + rows[p] * D;
      const T* c = x + cols[p] * D;
      double s = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        const double t = static_cast<double>(a[d]) - static_cast<double>(c[d]);
        s += t * t;
      }
      out[p] = s;
    }
  });
}

Tensor pair_sq_dist_cpu(const Tensor& x, const Tensor& rows, const Tensor& cols) {
  check_dim(x, 2, "x");
  check_floating(x, "x");
  STD_TORCH_CHECK(x.is_contiguous(), "pair_sq_dist: x must be contiguous");
  check_dtype(rows, ScalarType::Long, "rows");
  check_dtype(cols, ScalarType::Long, "cols");
  STD_TORCH_CHECK(rows.dim() == 1 && cols.dim() == 1 && rows.size(0) == cols.size(0) &&
                      rows.is_contiguous() && cols.is_contiguous(),
                  "pair_sq_dist: rows and cols must be contiguous 1-D of equal length");
  const int64_t P = rows.size(0), N = x.size(0);
  const int64_t* rp = rows.const_data_ptr<int64_t>();
  const int64_t* cp = cols.const_data_ptr<int64_t>();
  for (int64_t p = 0; p < P; ++p) {
    STD_TORCH_CHECK(rp[p] >= 0 && rp[p] < N && cp[p] >= 0 && cp[p] < N,
                    "pair_sq_dist: index out of range");
  }
  auto out = torch::stable::empty({P}, ScalarType::Double, std::nullopt, x.device());
  double* o = out.mutable_data_ptr<double>();
  REIDKERN_DISPATCH_FLOATING(x, "pair_sq_dist", [&] {
    pair_sq_dist_impl<scalar_t>(static_cast<const scalar_t*>(x.const_data_ptr()), x.size(1), rp, cp,
                                P, o);
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CPU, m) {
  m.impl("k_reciprocal_expand", TORCH_BOX(&k_reciprocal_expand_cpu));
  m.impl("sparse_rows_mean", TORCH_BOX(&sparse_rows_mean_cpu));
  m.impl("jaccard_sum_min", TORCH_BOX(&jaccard_sum_min_cpu));
  m.impl("jaccard_rerank", TORCH_BOX(&jaccard_rerank_cpu));
  m.impl("pair_sq_dist", TORCH_BOX(&pair_sq_dist_cpu));
}

}  // namespace reidkern

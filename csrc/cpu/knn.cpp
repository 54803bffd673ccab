// CPU kernel of reidkern::knn: for each row of x [M, D], the k nearest rows of y [Ny, D] by the
// exact float64 squared Euclidean distance sum_d (x_d - y_d)^2 (difference form, summed in d
// order), ties by index, and the row's maximum distance over all of y. Never an M x Ny array.
//
// Tiles of x rows and y rows go through the BLAS matrix product (torch's matmul, in the inputs'
// dtype) to get approximate distances a = |x|^2 + |y|^2 - 2 x.y with a rigorous error bound e
// (|fl(x.y) - x.y| <= gamma_D |x||y| for any summation order, plus the float64 rounding of the
// rest). A streaming filter keeps every column whose lower bound a - e can still be among the k
// smallest (compared with the k-th smallest upper bound a + e seen so far), and every column whose
// upper bound can still be the maximum. Only those candidates are recomputed exactly in float64,
// so the result is the exact k smallest with index-ordered ties, whatever the BLAS rounding.
// Memory: O(tile) + O(M k) candidates.
#include "knn.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <limits>
#include <utility>
#include <vector>

namespace reidkern {
namespace {

constexpr int64_t kTileRows = 512;
constexpr int64_t kTileCols = 8192;

template <typename T>
double exact_sq(const T* a, const T* b, int64_t dim) {
  double s = 0.0;
  for (int64_t d = 0; d < dim; ++d) {
    const double t = static_cast<double>(a[d]) - static_cast<double>(b[d]);
    s += t * t;
  }
  return s;
}

struct RowState {
  std::vector<double> heap;                       // max-heap: k smallest upper bounds so far
  std::vector<std::pair<double, int64_t>> cand;   // (lower bound, column) of k-nearest candidates
  std::vector<std::pair<double, int64_t>> maxc;   // (upper bound, column) of maximum candidates
  size_t cap = 0, maxcap = 0;
  double lmax = -std::numeric_limits<double>::infinity();  // largest lower bound seen

  double upper(int64_t k) const {
    return static_cast<int64_t>(heap.size()) < k ? std::numeric_limits<double>::infinity()
                                                  : heap.front();
  }
  void prune_cand(double u) {
    cand.erase(std::remove_if(cand.begin(), cand.end(),
                              [u](const std::pair<double, int64_t>& c) { return c.first > u; }),
               cand.end());
  }
  void prune_max() {
    const double l = lmax;
    maxc.erase(std::remove_if(maxc.begin(), maxc.end(),
                              [l](const std::pair<double, int64_t>& c) { return c.first < l; }),
               maxc.end());
  }
};

template <typename T>
void update_one(RowState& st, double a, double e, int64_t j, int64_t k) {
  const double lo = a - e, hi = a + e;
  double u = st.upper(k);
  if (hi < u) {
    if (static_cast<int64_t>(st.heap.size()) == k) {
      std::pop_heap(st.heap.begin(), st.heap.end());
      st.heap.back() = hi;
    } else {
      st.heap.push_back(hi);
    }
    std::push_heap(st.heap.begin(), st.heap.end());
    u = st.upper(k);
  }
  if (lo <= u) {
    st.cand.emplace_back(lo, j);
    if (st.cand.size() > st.cap) {
      st.prune_cand(u);
      if (st.cand.size() > st.cap / 2) st.cap *= 2;
    }
  }
  if (lo > st.lmax) st.lmax = lo;
  if (hi >= st.lmax) {
    st.maxc.emplace_back(hi, j);
    if (st.maxc.size() > st.maxcap) {
      st.prune_max();
      if (st.maxc.size() > st.maxcap / 2) st.maxcap *= 2;
    }
  }
}

// Error-bound factors of a = |x|^2 + |y|^2 - 2 x.y: 2 * gamma_D(u) |x||y| for the product (any
// order, FMA or not), and a few float64 roundings of |x|^2, |y|^2 and the sum; both doubled.
struct Bounds {
  double rel_dot, rel_sq;
};

template <typename T>
Bounds error_bounds(int64_t D) {
  const double u = std::is_same<T, float>::value ? std::ldexp(1.0, -24) : std::ldexp(1.0, -53);
  const double gamma = (D + 2) * u / (1.0 - (D + 2) * u);
  return {2.0 * 2.0 * gamma, 2.0 * (D + 8) * std::ldexp(1.0, -52)};
}

// Rows [begin, begin + n) of a tile side: their squared norms and norms, and the largest of each
// (the chunk filter's error bound uses the side's largest).
struct NormSpan {
  int64_t begin, n;
  const double* sq;
  const double* norm;
  double sq_max, norm_max;
};

// Squared norms (float64, exact as exact_sq computes them) and norms of the rows of a matrix.
struct RowNorms {
  std::vector<double> sq, norm;

  template <typename T>
  RowNorms(const T* p, int64_t n, int64_t D) : sq(n), norm(n) {
    torch::stable::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
      std::vector<T> zero(D, T(0));
      for (int64_t j = b; j < e; ++j) {
        sq[j] = exact_sq<T>(p + j * D, zero.data(), D);
        norm[j] = std::sqrt(sq[j]);
      }
    });
  }
  NormSpan span(int64_t begin, int64_t n) const {  // n >= 1
    return {begin, n, sq.data() + begin, norm.data() + begin,
            *std::max_element(sq.begin() + begin, sq.begin() + begin + n),
            *std::max_element(norm.begin() + begin, norm.begin() + begin + n)};
  }
};

// Streams one row of a product tile (the products of a row of squared norm xn, norm xnorm, with
// the columns `cols`) through the filter. Columns go in chunks of 32: a branch-free (vectorisable)
// pass asks whether any column of the chunk can matter -- a lower bound at most the current k-th
// upper bound, or an upper bound at least the current largest lower bound, with the tile's largest
// error bound -- and only such chunks take the exact per-column path.
template <typename T>
void update_row(RowState& st, const T* prod, double xn, double xnorm, const NormSpan& cols,
                int64_t k, Bounds eb) {
  constexpr int64_t kChunk = 32;
  // locals, not loads through the spans: the filter's stores could alias them
  const double *yn = cols.sq, *ynorm = cols.norm;
  const double rel_dot = eb.rel_dot, rel_sq = eb.rel_sq;
  const int64_t n = cols.n, j0 = cols.begin;
  const double emax = rel_dot * xnorm * cols.norm_max + rel_sq * (xn + cols.sq_max) + 1e-300;
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t c1 = std::min(n, c0 + kChunk);
    const double lo_limit = st.upper(k) + emax;  // a <= this: may be a neighbour
    const double hi_limit = st.lmax - emax;      // a >= this: may be the maximum
    int any = 0;
    for (int64_t c = c0; c < c1; ++c) {
      const double a = xn + yn[c] - 2.0 * static_cast<double>(prod[c]);
      any |= static_cast<int>(a <= lo_limit) | static_cast<int>(a >= hi_limit);
    }
    if (!any) continue;
    for (int64_t c = c0; c < c1; ++c) {
      const double a = xn + yn[c] - 2.0 * static_cast<double>(prod[c]);
      const double e = rel_dot * xnorm * ynorm[c] + rel_sq * (xn + yn[c]) + 1e-300;
      update_one<T>(st, a, e, j0 + c, k);
    }
  }
}

// One product tile, the rows `rows` of x against the rows `cols` of y (the BLAS product in the
// inputs' dtype, [rows.n, cols.n] contiguous), fed to the filters of its rows: states[r] is row
// rows.begin + r's. Returns the tile, which the self search also feeds to its columns' filters.
template <typename T>
Tensor feed_tile(RowState* states, const Tensor& x, const NormSpan& rows, const Tensor& y,
                 const NormSpan& cols, int64_t k, const Bounds& eb) {
  const Tensor xt = torch::stable::narrow(const_cast<Tensor&>(x), 0, rows.begin, rows.n);
  const Tensor yt = torch::stable::narrow(const_cast<Tensor&>(y), 0, cols.begin, cols.n);
  const Tensor prod =
      torch::stable::contiguous(torch::stable::matmul(xt, torch::stable::transpose(yt, 0, 1)));
  const T* pp = static_cast<const T*>(prod.const_data_ptr());
  torch::stable::parallel_for(0, rows.n, 8, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      update_row<T>(states[r], pp + r * cols.n, rows.sq[r], rows.norm[r], cols, k, eb);
    }
  });
  return prod;
}

void init_states(std::vector<RowState>& states, int64_t k) {
  for (auto& s : states) {
    s.heap.reserve(k);
    s.cap = static_cast<size_t>(2 * k + 64);
    s.maxcap = 64;
  }
}

// Exact float64 recheck of the surviving candidates of rows [r0, r0 + rows) of x against
// y: the k nearest (ties by index) and the row maximum; frees each row's buffers.
template <typename T>
void finish_rows(RowState* states, int64_t rows, int64_t r0, const T* xp, const T* yp, int64_t D,
                 int64_t k, int64_t offset, double* out_d, int64_t* out_i, double* out_max) {
  const double inf = std::numeric_limits<double>::infinity();
  torch::stable::parallel_for(0, rows, 8, [&](int64_t b, int64_t e) {
    std::vector<std::pair<double, int64_t>> exact;
    for (int64_t r = b; r < e; ++r) {
      RowState& st = states[r];
      const int64_t i = r0 + r;
      const T* xi = xp + i * D;
      st.prune_cand(st.upper(k));
      exact.clear();
      for (const auto& c : st.cand) exact.emplace_back(exact_sq<T>(xi, yp + c.second * D, D), c.second);
      const int64_t take = std::min<int64_t>(k, static_cast<int64_t>(exact.size()));
      std::partial_sort(exact.begin(), exact.begin() + take, exact.end());
      for (int64_t t = 0; t < k; ++t) {
        out_d[i * k + t] = t < take ? exact[t].first : inf;
        out_i[i * k + t] = t < take ? exact[t].second + offset : -1;
      }
      st.prune_max();
      double m = -inf;
      for (const auto& c : st.maxc) m = std::max(m, exact_sq<T>(xi, yp + c.second * D, D));
      out_max[i] = m;
      st = RowState();  // free the row's buffers
    }
  });
}

template <typename T>
void knn_impl(const Tensor& x, const Tensor& y, int64_t k, int64_t offset, double* out_d,
              int64_t* out_i, double* out_max) {
  const int64_t M = x.size(0), Ny = y.size(0), D = x.size(1);
  const T* xp = static_cast<const T*>(x.const_data_ptr());
  const T* yp = static_cast<const T*>(y.const_data_ptr());
  const RowNorms yn(yp, Ny, D), xn(xp, M, D);
  const Bounds eb = error_bounds<T>(D);

  for (int64_t r0 = 0; r0 < M; r0 += kTileRows) {
    const NormSpan rows = xn.span(r0, std::min(kTileRows, M - r0));
    std::vector<RowState> states(rows.n);
    init_states(states, k);
    for (int64_t c0 = 0; c0 < Ny; c0 += kTileCols) {
      feed_tile<T>(states.data(), x, rows, y, yn.span(c0, std::min(kTileCols, Ny - c0)), k, eb);
    }
    finish_rows<T>(states.data(), rows.n, r0, xp, yp, D, k, offset, out_d, out_i, out_max);
  }
}

// The self search (y = x): the product x x^T is symmetric, so only the tiles on and right of the
// diagonal are computed. Tile (I, J), J's columns right of I's rows, feeds the filters of I's rows
// (its rows) and of J's rows (its columns, through a transposed copy of a few columns at a time);
// a diagonal tile feeds its rows only, which already covers both orders of every pair in it. Every
// row therefore sees every column once, with the same a and e as the one-sided search (both are
// symmetric in the pair), and the filter keeps its guarantee whatever order columns arrive in:
// the result is the one-sided kernel's, for half the products. All rows' filters live at once:
// O(N k) memory (a few KB per row) besides one product tile.
template <typename T>
void knn_self_impl(const Tensor& x, int64_t k, double* out_d, int64_t* out_i, double* out_max) {
  const int64_t N = x.size(0), D = x.size(1);
  const T* xp = static_cast<const T*>(x.const_data_ptr());
  const RowNorms xn(xp, N, D);
  const Bounds eb = error_bounds<T>(D);
  std::vector<RowState> states(N);
  init_states(states, k);
  constexpr int64_t kBlock = 64;  // columns transposed together for the column-side updates

  for (int64_t r0 = 0; r0 < N; r0 += kTileRows) {
    const NormSpan rows = xn.span(r0, std::min(kTileRows, N - r0));
    for (int64_t c0 = r0; c0 < N; c0 += kTileCols) {
      const int64_t cols = std::min(kTileCols, N - c0);
      // rows of I against every column of the tile (the diagonal block included)
      const Tensor prod = feed_tile<T>(states.data() + r0, x, rows, x, xn.span(c0, cols), k, eb);
      const T* pp = static_cast<const T*>(prod.const_data_ptr());
      // the tile's columns outside the diagonal block against the rows of I
      const int64_t first = std::max<int64_t>(0, r0 + rows.n - c0);
      const int64_t nblocks = (cols - first + kBlock - 1) / kBlock;
      torch::stable::parallel_for(0, nblocks, 1, [&](int64_t b, int64_t e) {
        std::vector<T> buf(static_cast<size_t>(kBlock * rows.n));
        for (int64_t blk = b; blk < e; ++blk) {
          const int64_t j0 = first + blk * kBlock, j1 = std::min(cols, j0 + kBlock);
          for (int64_t r = 0; r < rows.n; ++r) {
            const T* src = pp + r * cols;
            for (int64_t j = j0; j < j1; ++j) buf[(j - j0) * rows.n + r] = src[j];
          }
          for (int64_t j = j0; j < j1; ++j) {
            const int64_t g = c0 + j;
            update_row<T>(states[g], buf.data() + (j - j0) * rows.n, xn.sq[g], xn.norm[g], rows, k, eb);
          }
        }
      });
    }
    // Rows of I have now seen every column: those left of I through earlier tiles' columns.
    finish_rows<T>(states.data() + r0, rows.n, r0, xp, xp, D, k, 0, out_d, out_i, out_max);
  }
}

// The outputs [M, k] distances, [M, k] indices and [M] row maxima of the search of x's rows,
// filled by search(T{}, distances, indices, maxima) for x's dtype T; checks shared by both entries.
template <typename Search>
std::tuple<Tensor, Tensor, Tensor> run_search(const char* name, const Tensor& x, const Tensor& y,
                                              int64_t k, Search search) {
  check_knn_inputs(x, y);
  STD_TORCH_CHECK(k >= 1, name, ": k must be >= 1");
  const int64_t M = x.size(0);
  Tensor dist = torch::stable::empty({M, k}, ScalarType::Double, std::nullopt, x.device());
  Tensor idx = torch::stable::empty({M, k}, ScalarType::Long, std::nullopt, x.device());
  Tensor rmax = torch::stable::empty({M}, ScalarType::Double, std::nullopt, x.device());
  if (M == 0) return {dist, idx, rmax};
  REIDKERN_DISPATCH_FLOATING(x, name, [&] {
    search(scalar_t{}, dist.mutable_data_ptr<double>(), idx.mutable_data_ptr<int64_t>(),
           rmax.mutable_data_ptr<double>());
  });
  return {dist, idx, rmax};
}

std::tuple<Tensor, Tensor, Tensor> knn_cpu(const Tensor& x, const Tensor& y, int64_t k,
                                           int64_t index_offset) {
  return run_search("knn", x, y, k, [&](auto t, double* dp, int64_t* ip, double* mp) {
    knn_impl<decltype(t)>(x, y, k, index_offset, dp, ip, mp);
  });
}

std::tuple<Tensor, Tensor, Tensor> knn_self_cpu(const Tensor& x, int64_t k) {
  return run_search("knn_self", x, x, k, [&](auto t, double* dp, int64_t* ip, double* mp) {
    knn_self_impl<decltype(t)>(x, k, dp, ip, mp);
  });
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CPU, m) {
  m.impl("knn", TORCH_BOX(&knn_cpu));
  m.impl("knn_self", TORCH_BOX(&knn_self_cpu));
}

}  // namespace reidkern

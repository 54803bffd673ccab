// CPU kernel of reidkern::evaluate_rank: per-query CMC first hit, AP and INP without sorting the
// gallery. The gallery is grouped by pid once, so a query finds its positives (and its junk: same
// pid, same camera) without scanning. Only the positives are sorted (distance, then index: the
// order a stable argsort gives ties). The rank of a positive is the number of entries ahead of it
// over the whole row minus the same-pid entries ahead of it (a handful). Entries ahead are counted
// block by block: each block of 64 keeps its min and max, so blocks wholly behind or wholly ahead
// cost one comparison and only blocks straddling the positive's distance are scanned, with a
// branch-free compare-and-count the compiler vectorises. Queries with many positives switch to one
// binary search per negative, O(G log P). A row holding NaN or inf is flagged with first_hit = -2.
#include "evaluate_rank.h"
#include "cpu/simd.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace reidkern {
namespace {

// Above this many positives per query, binary search (O(G log P)) beats compare-and-count (O(P G)).
constexpr int64_t kCountingMaxPositives = 48;

struct Entry {
  double dist;
  int64_t index;
  bool operator<(const Entry& o) const {
    return dist < o.dist || (dist == o.dist && index < o.index);
  }
};

// Gallery indices grouped by pid (each group in index order), for O(log) lookup per query.
struct PidGroups {
  std::vector<int64_t> order;  // gallery indices sorted by (pid, index)
  std::vector<int64_t> pids;   // distinct pids, ascending
  std::vector<int64_t> start;  // group g is order[start[g] .. start[g+1])

  PidGroups(const int64_t* g_pids, int64_t num_g) : order(num_g) {
    for (int64_t j = 0; j < num_g; ++j) order[j] = j;
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return g_pids[a] < g_pids[b]; });
    for (int64_t t = 0; t < num_g; ++t) {
      if (t == 0 || g_pids[order[t]] != pids.back()) {
        pids.push_back(g_pids[order[t]]);
        start.push_back(t);
      }
    }
    start.push_back(num_g);
  }

  // [first, second) range in `order` of the entries with this pid (empty if none).
  std::pair<int64_t, int64_t> find(int64_t pid) const {
    auto it = std::lower_bound(pids.begin(), pids.end(), pid);
    if (it == pids.end() || *it != pid) return {0, 0};
    const auto g = it - pids.begin();
    return {start[g], start[g + 1]};
  }
};

// Entries of row[0..n) ranked ahead of entry jp at distance d: closer, or as close and earlier.
// Counts accumulate in 32-bit lanes over blocks of 2^30 (more lanes per SIMD op than 64-bit
// counts), and the loop is compiled per instruction set with a run-time choice (cpu/simd.h),
// keeping the default build portable.
template <typename scalar_t, int /*VB: unused, the compiler vectorises*/>
REIDKERN_INLINE int64_t count_ahead_impl(const scalar_t* row, int64_t n, int64_t jp, scalar_t d) {
  int64_t total = 0;
  constexpr int64_t kBlock = int64_t(1) << 30;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock), mid = std::max(b, std::min(jp, e));
    int32_t c = 0;
    for (int64_t t = b; t < mid; ++t) c += row[t] <= d;
    for (int64_t t = mid; t < e; ++t) c += row[t] < d;
    total += c;
  }
  return total;
}
REIDKERN_ISA_CLONES(count_ahead, count_ahead_impl)

// Min and max of each block of kBlock entries of row[0..n).
constexpr int64_t kBlock = 64;

template <typename scalar_t>
void block_bounds(const scalar_t* row, int64_t n, scalar_t* bmin, scalar_t* bmax) {
  for (int64_t b = 0, lo = 0; lo < n; ++b, lo += kBlock) {
    const int64_t hi = std::min(n, lo + kBlock);
    scalar_t mn = row[lo], mx = row[lo];
    for (int64_t t = lo + 1; t < hi; ++t) {
      mn = row[t] < mn ? row[t] : mn;
      mx = row[t] > mx ? row[t] : mx;
    }
    bmin[b] = mn;
    bmax[b] = mx;
  }
}

// Entries ranked ahead of (d, jp), skipping blocks wholly behind and adding blocks wholly ahead.
template <typename scalar_t>
int64_t count_ahead_blocked(const scalar_t* row, int64_t n, const scalar_t* bmin,
                            const scalar_t* bmax, int64_t jp, scalar_t d) {
  int64_t c = 0;
  for (int64_t b = 0, lo = 0; lo < n; ++b, lo += kBlock) {
    const int64_t hi = std::min(n, lo + kBlock);
    if (bmin[b] > d || (bmin[b] >= d && lo >= jp)) continue;  // all behind
    if (bmax[b] < d || (bmax[b] <= d && hi <= jp)) {        // all ahead
      c += hi - lo;
      continue;
    }
    c += count_ahead<scalar_t>(row + lo, hi - lo, std::max<int64_t>(0, std::min(jp - lo, hi - lo)), d);
  }
  return c;
}

template <typename scalar_t>
bool row_finite(const scalar_t* row, int64_t n) {
  int64_t bad = 0;
  for (int64_t t = 0; t < n; ++t) bad += !((row[t] - row[t]) == scalar_t(0));  // inf and NaN
  return bad == 0;
}

struct RankArgs {
  const int64_t* q_pids;
  const int64_t* q_camids;
  const int64_t* g_pids;
  const int64_t* g_camids;
  int64_t num_g;
  bool trapezoid;
};

template <typename scalar_t>
void evaluate_rank_rows(const scalar_t* dist, int64_t s0, int64_t s1, const RankArgs& a,
                        const PidGroups& groups, int64_t begin, int64_t end, int64_t* first_hit,
                        double* ap_out, double* inp_out) {
  const int64_t num_g = a.num_g;
  std::vector<scalar_t> buffer(s1 == 1 ? 0 : num_g);
  const int64_t num_blocks = (num_g + kBlock - 1) / kBlock;
  std::vector<scalar_t> bmin(num_blocks), bmax(num_blocks);
  std::vector<Entry> pos, junk;
  std::vector<int64_t> ranks, ahead;
  for (int64_t i = begin; i < end; ++i) {
    const scalar_t* row = dist + i * s0;
    if (s1 != 1) {  // gather a strided row once so the counting loops stay contiguous
      for (int64_t j = 0; j < num_g; ++j) buffer[j] = row[j * s1];
      row = buffer.data();
    }
    first_hit[i] = -1;
    ap_out[i] = 0.0;
    inp_out[i] = 0.0;
    if (!row_finite(row, num_g)) {
      first_hit[i] = -2;
      continue;
    }
    pos.clear();
    junk.clear();
    const auto range = groups.find(a.q_pids[i]);
    for (int64_t t = range.first; t < range.second; ++t) {
      const int64_t j = groups.order[t];
      // Same pid and same camera: junk under the Market-1501 protocol, dropped from the ranking.
      (a.g_camids[j] == a.q_camids[i] ? junk : pos).push_back({static_cast<double>(row[j]), j});
    }
    const int64_t P = static_cast<int64_t>(pos.size());
    if (P == 0) continue;
    std::sort(pos.begin(), pos.end());
    ranks.assign(P, 0);
    if (P <= kCountingMaxPositives) {
      std::sort(junk.begin(), junk.end());
      block_bounds(row, num_g, bmin.data(), bmax.data());
      int64_t junk_ahead = 0;
      for (int64_t k = 0; k < P; ++k) {
        while (junk_ahead < static_cast<int64_t>(junk.size()) && junk[junk_ahead] < pos[k]) ++junk_ahead;
        const int64_t all_ahead = count_ahead_blocked(row, num_g, bmin.data(), bmax.data(),
                                                      pos[k].index,
                                                      static_cast<scalar_t>(pos[k].dist));
        // Ahead among valid entries = all ahead - junk ahead; positives ahead are k of them.
        ranks[k] = all_ahead - junk_ahead;
      }
    } else {
      ahead.assign(P + 1, 0);  // ahead[b]: negatives with exactly b positives before them
      const int64_t qp = a.q_pids[i];
      for (int64_t j = 0; j < num_g; ++j) {
        if (a.g_pids[j] == qp) continue;
        const Entry key{static_cast<double>(row[j]), j};
        ++ahead[std::lower_bound(pos.begin(), pos.end(), key) - pos.begin()];
      }
      int64_t negatives_ahead = 0;
      for (int64_t k = 0; k < P; ++k) {
        negatives_ahead += ahead[k];
        ranks[k] = k + negatives_ahead;
      }
    }
    double ap = 0.0;
    for (int64_t k = 0; k < P; ++k) {
      const int64_t rank = ranks[k];  // 0-based rank of the k-th positive among valid entries
      const double precision = double(k + 1) / double(rank + 1);
      if (a.trapezoid) {
        // Market-1501 MATLAB evaluation: trapezoid between the precision before and at this hit.
        const double old_precision = rank == 0 ? 1.0 : double(k) / double(rank);
        ap += 0.5 * (old_precision + precision);
      } else {
        ap += precision;
      }
    }
    first_hit[i] = ranks[0];
    ap_out[i] = ap / double(P);
    inp_out[i] = double(P) / double(ranks[P - 1] + 1);
  }
}

std::tuple<Tensor, Tensor, Tensor> evaluate_rank_cpu(const Tensor& distmat, const Tensor& q_pids,
                                                     const Tensor& g_pids, const Tensor& q_camids,
                                                     const Tensor& g_camids, bool trapezoid) {
  check_rank_inputs(distmat, q_pids, g_pids, q_camids, g_camids);
  const int64_t Q = distmat.size(0), G = distmat.size(1);
  auto first_hit = torch::stable::empty({Q}, ScalarType::Long, std::nullopt, distmat.device());
  auto all_ap = torch::stable::empty({Q}, ScalarType::Double, std::nullopt, distmat.device());
  auto all_inp = torch::stable::empty({Q}, ScalarType::Double, std::nullopt, distmat.device());
  int64_t* fh = first_hit.mutable_data_ptr<int64_t>();
  double* ap = all_ap.mutable_data_ptr<double>();
  double* inp = all_inp.mutable_data_ptr<double>();
  const RankArgs args{q_pids.const_data_ptr<int64_t>(), q_camids.const_data_ptr<int64_t>(),
                      g_pids.const_data_ptr<int64_t>(), g_camids.const_data_ptr<int64_t>(), G,
                      trapezoid};
  const PidGroups groups(args.g_pids, G);
  const int64_t s0 = distmat.stride(0), s1 = distmat.stride(1);
  REIDKERN_DISPATCH_FLOATING(distmat, "evaluate_rank", [&] {
    const scalar_t* d = static_cast<const scalar_t*>(distmat.const_data_ptr());
    // torch's intra-op thread pool (OpenMP in torch's CPU builds); a few queries per task.
    torch::stable::parallel_for(0, Q, 4, [&](int64_t begin, int64_t end) {
      evaluate_rank_rows<scalar_t>(d, s0, s1, args, groups, begin, end, fh, ap, inp);
    });
  });
  return {first_hit, all_ap, all_inp};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CPU, m) {
  m.impl("evaluate_rank", TORCH_BOX(&evaluate_rank_cpu));
}

}  // namespace reidkern

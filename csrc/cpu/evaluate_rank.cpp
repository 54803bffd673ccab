// CPU kernel of reidkern::evaluate_rank: per-query CMC first hit, AP and INP without sorting the
// gallery. For each query only its positives are sorted (by distance, then gallery index, as a
// stable argsort orders ties); every negative is placed between them by binary search, so the rank
// of the k-th positive is k plus the number of negatives ahead of it.
// Cost per query: O(G log P) time, O(P) memory (P = positives of the query).
#include "common.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace reidkern {
namespace {

template <typename scalar_t>
void evaluate_rank_rows(const scalar_t* dist, int64_t s0, int64_t s1, const int64_t* q_pids,
                        const int64_t* g_pids, const int64_t* q_camids, const int64_t* g_camids,
                        int64_t num_g, bool trapezoid, int64_t begin, int64_t end,
                        int64_t* first_hit, double* ap_out, double* inp_out) {
  std::vector<std::pair<scalar_t, int64_t>> pos;  // (distance, gallery index) of positives
  std::vector<int64_t> ahead;                     // ahead[b]: negatives with b positives before them
  for (int64_t i = begin; i < end; ++i) {
    const scalar_t* row = dist + i * s0;
    const int64_t qp = q_pids[i], qc = q_camids[i];
    pos.clear();
    for (int64_t j = 0; j < num_g; ++j) {
      // Same pid and same camera: junk under the Market-1501 protocol, dropped.
      if (g_pids[j] == qp && g_camids[j] != qc) pos.emplace_back(row[j * s1], j);
    }
    const int64_t P = static_cast<int64_t>(pos.size());
    if (P == 0) {
      first_hit[i] = -1;
      ap_out[i] = 0.0;
      inp_out[i] = 0.0;
      continue;
    }
    std::sort(pos.begin(), pos.end());  // (distance, index): the stable-sort order
    ahead.assign(P + 1, 0);
    for (int64_t j = 0; j < num_g; ++j) {
      if (g_pids[j] == qp) continue;  // positives and junk
      const std::pair<scalar_t, int64_t> key(row[j * s1], j);
      const int64_t b = std::lower_bound(pos.begin(), pos.end(), key) - pos.begin();
      ++ahead[b];
    }
    double ap = 0.0;
    int64_t negatives_ahead = 0, rank = 0;
    for (int64_t k = 0; k < P; ++k) {
      negatives_ahead += ahead[k];
      rank = k + negatives_ahead;  // 0-based rank of the k-th positive among valid gallery entries
      if (k == 0) first_hit[i] = rank;
      const double precision = double(k + 1) / double(rank + 1);
      if (trapezoid) {
        // Market-1501 MATLAB evaluation: trapezoid between the precision before and at this hit.
        const double old_precision = rank == 0 ? 1.0 : double(k) / double(rank);
        ap += 0.5 * (old_precision + precision);
      } else {
        ap += precision;
      }
    }
    ap_out[i] = ap / double(P);
    inp_out[i] = double(P) / double(rank + 1);
  }
}

std::tuple<Tensor, Tensor, Tensor> evaluate_rank_cpu(const Tensor& distmat, const Tensor& q_pids,
                                                     const Tensor& g_pids, const Tensor& q_camids,
                                                     const Tensor& g_camids, bool trapezoid) {
  check_dim(distmat, 2, "distmat");
  check_floating(distmat, "distmat");
  const int64_t Q = distmat.size(0), G = distmat.size(1);
  for (auto* t : {&q_pids, &q_camids}) STD_TORCH_CHECK(t->dim() == 1 && t->size(0) == Q, "query ids must be [Q]");
  for (auto* t : {&g_pids, &g_camids}) STD_TORCH_CHECK(t->dim() == 1 && t->size(0) == G, "gallery ids must be [G]");
  for (auto* t : {&q_pids, &g_pids, &q_camids, &g_camids}) {
    check_dtype(*t, ScalarType::Long, "pids/camids");
    STD_TORCH_CHECK(t->is_contiguous(), "pids/camids must be contiguous");
  }
  auto first_hit = torch::stable::empty({Q}, ScalarType::Long, std::nullopt, distmat.device());
  auto all_ap = torch::stable::empty({Q}, ScalarType::Double, std::nullopt, distmat.device());
  auto all_inp = torch::stable::empty({Q}, ScalarType::Double, std::nullopt, distmat.device());
  int64_t* fh = first_hit.mutable_data_ptr<int64_t>();
  double* ap = all_ap.mutable_data_ptr<double>();
  double* inp = all_inp.mutable_data_ptr<double>();
  const int64_t* qp = q_pids.const_data_ptr<int64_t>();
  const int64_t* gp = g_pids.const_data_ptr<int64_t>();
  const int64_t* qc = q_camids.const_data_ptr<int64_t>();
  const int64_t* gc = g_camids.const_data_ptr<int64_t>();
  const int64_t s0 = distmat.stride(0), s1 = distmat.stride(1);
  REIDKERN_DISPATCH_FLOATING(distmat, "evaluate_rank", [&] {
    const scalar_t* d = static_cast<const scalar_t*>(distmat.const_data_ptr());
    // torch's intra-op thread pool (OpenMP in torch's CPU builds); a few queries per task.
    torch::stable::parallel_for(0, Q, 4, [&](int64_t begin, int64_t end) {
      evaluate_rank_rows<scalar_t>(d, s0, s1, qp, gp, qc, gc, G, trapezoid, begin, end, fh, ap, inp);
    });
  });
  return {first_hit, all_ap, all_inp};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(reidkern, CPU, m) {
  m.impl("evaluate_rank", TORCH_BOX(&evaluate_rank_cpu));
}

}  // namespace reidkern

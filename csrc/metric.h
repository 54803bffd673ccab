// Distance metrics of reidkern's ops, with their clamps: the one definition for C++ and CUDA.
// reidkern/_metric.py holds the same codes and constants for Python and Triton; tests/test_metric.py
// checks that the two agree. Each name has one meaning everywhere in reidkern:
//   euclidean    sqrt(max(|x|^2 + |y|^2 - 2 x.y, kSqClamp))   (fast-reid / torchreid's clamp: a finite
//                                                            gradient, 0, at coincident points)
//   sqeuclidean  max(|x|^2 + |y|^2 - 2 x.y, 0)
//   cosine       1 - x.y / (max(|x|, kNormEps) max(|y|, kNormEps))   (F.normalize's eps)
#pragma once

#include <cstdint>

namespace reidkern {

// The `int metric` argument of the op schemas (csrc/registration.cpp).
enum Metric : int64_t { kEuclidean = 0, kSqEuclidean = 1, kCosine = 2 };
constexpr int64_t kNumMetrics = 3;

constexpr double kSqClamp = 1e-12;  // euclidean: the squared distance is clamped below at this
constexpr double kNormEps = 1e-12;  // cosine: norms are clamped below at this

}  // namespace reidkern

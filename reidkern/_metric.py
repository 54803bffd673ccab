"""Distance metrics of reidkern's ops: names, the integer codes the op schemas take, and clamps.

One meaning per name everywhere in reidkern (ops, losses, evaluation, Triton, C++ and CUDA):

* ``"euclidean"``   sqrt(max(|x|² + |y|² − 2x·y, SQ_CLAMP)) — the Euclidean distance, clamped as
  fast-reid and torchreid clamp it (a finite gradient, 0, at coincident points);
* ``"sqeuclidean"`` max(|x|² + |y|² − 2x·y, 0) — the squared Euclidean distance;
* ``"cosine"``      1 − x·y / (max(|x|, NORM_EPS) max(|y|, NORM_EPS)) (``F.normalize``'s eps).

The C++/CUDA definition is csrc/metric.h; tests/test_metric.py checks that the two agree. Triton
kernels take the code as a ``tl.constexpr`` and compare it with these values.
"""
import enum

SQ_CLAMP = 1e-12  # euclidean: the squared distance is clamped below at this
NORM_EPS = 1e-12  # cosine: norms are clamped below at this


METRIC_NAMES = ("euclidean", "sqeuclidean", "cosine")  # Metric's members, lower case


class Metric(enum.IntEnum):
    """The ``int metric`` argument of the op schemas (csrc/registration.cpp)."""

    EUCLIDEAN = 0
    SQEUCLIDEAN = 1
    COSINE = 2

    @classmethod
    def from_name(cls, name):
        """The metric called ``name`` ("euclidean", "sqeuclidean", "cosine").

        Raises:
            ValueError: any other name (or a non-string).
        """
        if isinstance(name, str) and name in METRIC_NAMES:
            return cls[name.upper()]
        raise ValueError(f"metric must be one of {METRIC_NAMES}, got {name!r}")

    @property
    def label(self) -> str:
        """The metric's name as the public functions take it."""
        return self.name.lower()



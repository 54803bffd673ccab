"""Pairwise distances between feature sets, with the metric names of reidkern/_metric.py.

``"euclidean"`` is the Euclidean distance and ``"sqeuclidean"`` its square everywhere in reidkern
(torchreid calls the squared distance "euclidean"; its rankings are the same, see
:func:`ranking_distance`).
"""
import torch

from reidkern._metric import METRIC_NAMES, NORM_EPS, SQ_CLAMP, Metric

METRICS = METRIC_NAMES


def check_metric(metric: str) -> str:
    """``metric`` itself when it is one of :data:`METRICS`; ValueError naming them otherwise."""
    Metric.from_name(metric)
    return metric


def _squared(x, y):
    """|x|² + |y|² − 2 x·y [M, N], unclamped (torchreid's ``compute_distance_matrix``)."""
    xx = (x * x).sum(dim=1, keepdim=True)
    yy = (y * y).sum(dim=1).unsqueeze(0)
    return torch.addmm(xx + yy, x, y.t(), beta=1.0, alpha=-2.0)


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """Distances between the rows of ``x`` [M, D] and ``y`` [N, D] → [M, N], in x's dtype.

    ``"euclidean"``: sqrt(max(|x|² + |y|² − 2x·y, SQ_CLAMP)); ``"sqeuclidean"``:
    max(|x|² + |y|² − 2x·y, 0); ``"cosine"``: 1 − cos(x, y), rows L2-normalised first (norms
    clamped at NORM_EPS). Definitions: reidkern/_metric.py.

    Raises:
        ValueError: an unknown metric.
    """
    metric = Metric.from_name(metric)
    if metric == Metric.COSINE:
        x = torch.nn.functional.normalize(x, dim=1, eps=NORM_EPS)
        y = torch.nn.functional.normalize(y, dim=1, eps=NORM_EPS)
        return 1.0 - x @ y.t()
    sq = _squared(x, y)
    if metric == Metric.SQEUCLIDEAN:
        return sq.clamp_(min=0)
    return sq.clamp_(min=SQ_CLAMP).sqrt_()


def ranking_distance(x: torch.Tensor, y: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """Distances that rank the rows of ``y`` for each row of ``x`` as ``metric`` ranks them.

    For "euclidean" and "sqeuclidean": |x|² + |y|² − 2x·y, unclamped, as torchreid ranks (same order
    as the distance, without the square root); for "cosine": :func:`pairwise_distance`.
    """
    if Metric.from_name(metric) == Metric.COSINE:
        return pairwise_distance(x, y, metric)
    return _squared(x, y)

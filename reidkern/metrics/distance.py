"""Pairwise distances between feature sets, as ReID evaluation uses them (torchreid's definitions)."""
import torch

METRICS = ("euclidean", "cosine")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """Distances between the rows of ``x`` [M, D] and ``y`` [N, D] → [M, N], in x's dtype.

    ``"euclidean"`` is the *squared* Euclidean distance ‖x‖² + ‖y‖² − 2·x·y (torchreid's
    ``compute_distance_matrix``; same ranking as the Euclidean distance). ``"cosine"`` is
    1 − cos(x, y) with rows L2-normalised first.
    """
    check_metric(metric)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
        y = torch.nn.functional.normalize(y, dim=1)
        return 1.0 - x @ y.t()
    xx = (x * x).sum(dim=1, keepdim=True)
    yy = (y * y).sum(dim=1).unsqueeze(0)
    return torch.addmm(xx + yy, x, y.t(), beta=1.0, alpha=-2.0)

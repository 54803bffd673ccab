"""Single-query image ReID protocol (Market-1501, DukeMTMC-reID, MSMT17, CUHK03-NP, Con-ReID).

Each query is ranked against the whole gallery; gallery images of the query's identity taken by
the query's camera are dropped (Market-1501 protocol, torchreid ``eval_market1501``); CMC, mAP
(mean precision at each hit) and mINP come from reidkern's ``evaluate_rank`` kernels. Camid −1 means
"no camera" (nothing dropped for it), so camera-free folders evaluate instead of failing with
"all query identities do not appear in gallery". Query identities absent from the gallery are
an error naming them (``missing="skip"`` skips them, as torchreid silently does).
"""
from __future__ import annotations


from reidkern.metrics.protocols.common import camera_free, check_query_ids
from reidkern.metrics.rank import RankResult, evaluate_features, evaluate_rank
from reidkern.ops import _validate as V

__all__ = ["evaluate_image_reid", "evaluate_image_reid_distmat"]


def _ids(q_pids, g_pids, q_camids, g_camids, num_q, num_g, device):
    q_pids = V.check_ids(q_pids, num_q, "q_pids", "num_query", device)
    g_pids = V.check_ids(g_pids, num_g, "g_pids", "num_gallery", device)
    q_camids = V.check_ids(q_camids, num_q, "q_camids", "num_query", device)
    g_camids = V.check_ids(g_camids, num_g, "g_camids", "num_gallery", device)
    return q_pids, g_pids, q_camids, g_camids


def evaluate_image_reid(qf, gf, q_pids, g_pids, q_camids, g_camids, metric: str = "euclidean",
                        max_rank: int = 50, missing: str = "raise", **kwargs) -> RankResult:
    """Single-query image ReID from features (never holds the Q×G matrix; see
    :func:`reidkern.metrics.evaluate_features`).

    Args:
        qf: [Q, D], gf: [G, D] features. q_pids, q_camids: [Q]; g_pids, g_camids: [G] int ids
            (camid −1 = no camera).
        metric: "euclidean" (squared) or "cosine". max_rank: CMC length.
        missing: "raise" (ValueError naming query ids absent from the gallery) or "skip".
        kwargs: passed to ``evaluate_features`` (trapezoid, backend, tile_rows, progress).

    Returns:
        :class:`~reidkern.metrics.RankResult` (cmc, mAP, mINP, per-query values).

    Raises:
        ValueError: query ids absent from the gallery (with ``missing="raise"``), and
        ``evaluate_features``'s errors (shapes, NaN, no valid query).
    """
    qf = V.as_tensor(qf, "qf")
    gf = V.as_tensor(gf, "gf")
    if qf.dim() != 2 or gf.dim() != 2:
        raise ValueError(f"qf and gf must be 2-D [N, dim], got {tuple(qf.shape)} and {tuple(gf.shape)}")
    q_pids, g_pids, q_camids, g_camids = _ids(q_pids, g_pids, q_camids, g_camids, qf.shape[0],
                                              gf.shape[0], qf.device)
    check_query_ids(q_pids, g_pids, missing)
    q_camids, g_camids = camera_free(q_camids, g_camids)
    return evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric,
                             max_rank=max_rank, **kwargs)


def evaluate_image_reid_distmat(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                                missing: str = "raise", **kwargs) -> RankResult:
    """Single-query image ReID from a [Q, G] distance matrix (e.g. after re-ranking); arguments
    and errors as :func:`evaluate_image_reid`, kwargs go to ``evaluate_rank``."""
    distmat = V.as_tensor(distmat, "distmat")
    if distmat.dim() != 2:
        raise ValueError(f"distmat must be 2-D [num_query, num_gallery], got {tuple(distmat.shape)}")
    q_pids, g_pids, q_camids, g_camids = _ids(q_pids, g_pids, q_camids, g_camids, distmat.shape[0],
                                              distmat.shape[1], distmat.device)
    check_query_ids(q_pids, g_pids, missing)
    q_camids, g_camids = camera_free(q_camids, g_camids)
    return evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank, **kwargs)

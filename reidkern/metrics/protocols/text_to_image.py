"""Text-to-image person retrieval protocol (CUHK-PEDES, ICFG-PEDES, RSTPReid), as IRRA's
``Evaluator`` runs it.

Every test caption queries every test image; an image is a true match when it shows the caption's
identity. Nothing is removed from the gallery. Reported: R@1, R@5, R@10 (CMC), mAP and mINP, from
reidkern's ``evaluate_rank`` kernels (similarity = cosine of L2-normalised features by default;
ties ranked by gallery index).
"""
from __future__ import annotations

from reidkern.metrics.protocols.common import evaluate_whole_gallery
from reidkern.metrics.rank import RankResult

__all__ = ["evaluate_text_to_image"]


def evaluate_text_to_image(text_feats, image_feats, text_pids, image_pids, metric: str = "cosine",
                           max_rank: int = 10, missing: str = "raise", **kwargs) -> RankResult:
    """Text→image retrieval metrics.

    Args:
        text_feats: [T, D] caption features; image_feats: [N, D] image features.
        text_pids: [T]; image_pids: [N] int ids.
        metric: "cosine" (IRRA) or "euclidean". max_rank: CMC length (R@1/5/10 need 10).
        missing: "raise" (ValueError naming caption ids with no image) or "skip".

    Returns:
        RankResult: ``rank(1)``, ``rank(5)``, ``rank(10)``, ``mAP``, ``mINP``.
    """
    return evaluate_whole_gallery(text_feats, image_feats, text_pids, image_pids, metric, max_rank, missing,
                                  names=("text_feats", "image_feats", "text_pids", "image_pids"),
                                  counts=("num_captions", "num_images"), **kwargs)

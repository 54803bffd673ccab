"""Text-to-image person retrieval protocol (CUHK-PEDES, ICFG-PEDES, RSTPReid), as IRRA's
``Evaluator`` runs it.

Every test caption queries every test image; an image is a true match when it shows the caption's
identity. Nothing is removed from the gallery. Reported: R@1, R@5, R@10 (CMC), mAP and mINP, from
reidkern's ``evaluate_rank`` kernels (similarity = cosine of L2-normalised features by default;
ties ranked by gallery index).
"""
from __future__ import annotations

import torch

from reidkern.metrics.protocols.common import check_query_ids
from reidkern.metrics.rank import RankResult, evaluate_features
from reidkern.ops import _validate as V

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
    text_feats = V.as_tensor(text_feats, "text_feats")
    image_feats = V.as_tensor(image_feats, "image_feats")
    dev = text_feats.device
    text_pids = V.check_ids(text_pids, text_feats.shape[0], "text_pids", "num_captions", dev)
    image_pids = V.check_ids(image_pids, image_feats.shape[0], "image_pids", "num_images", dev)
    check_query_ids(text_pids, image_pids, missing)
    return evaluate_features(text_feats, image_feats, text_pids, image_pids, torch.full_like(text_pids, -1),
                             torch.full_like(image_pids, -2), metric=metric, max_rank=max_rank, **kwargs)

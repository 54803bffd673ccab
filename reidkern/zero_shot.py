"""Evaluate a ReID model on a dataset's test split: reader → test pipeline → features → protocol.

Used by ``reidkern eval --dataset NAME --data DIR --weights osnet.onnx`` and ``reidkern demo
--dataset con-reid``: the query and gallery records of any image-ReID reader
(:func:`reidkern.data.build_dataset`) go through the field's test pipeline
(:func:`reidkern.data.build_transforms`, resize + ImageNet normalisation), the model's features come
from :func:`reidkern.engine.extract_features` (optional flip averaging), and the single-query image
ReID protocol (:func:`reidkern.metrics.protocols.evaluate_image_reid`) scores them.
"""
from __future__ import annotations

import time
from typing import NamedTuple, Optional

import torch

__all__ = ["ZeroShotResult", "extract_split", "evaluate_model", "load_backbone"]


class ZeroShotResult(NamedTuple):
    """``result`` (RankResult), query/gallery :class:`reidkern.engine.Features`, and seconds spent
    extracting and evaluating."""

    result: object
    query: object
    gallery: object
    extract_s: float
    eval_s: float


def extract_split(model, records, height: int = 256, width: int = 128, batch_size: int = 64,
                  flip: bool = False, num_workers: int = 0, progress: bool = True, desc: str = "extract"):
    """Features of ``records`` (test pipeline, loader order = record order):
    :class:`reidkern.engine.Features` (feats float32 [N, D], pids, camids, modality)."""
    from reidkern.data import ImageDataset, build_transforms
    from reidkern.engine import extract_features

    ds = ImageDataset(records, build_transforms(height, width, train=False))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return extract_features(model, loader, flip=flip, progress=progress, desc=desc)


def evaluate_model(model, dataset, metric: str = "cosine", height: int = 256, width: int = 128,
                   batch_size: int = 64, flip: bool = False, num_workers: int = 0, max_rank: int = 50,
                   missing: str = "raise", progress: bool = True) -> ZeroShotResult:
    """Single-query image ReID of ``model`` on ``dataset.query`` × ``dataset.gallery``.

    Args:
        model: ``nn.Module`` mapping [B, 3, H, W] → [B, D] features.
        dataset: a reader's result (``.query`` / ``.gallery`` records).
        metric: "cosine" or "euclidean". height, width: input size. flip: flip-averaged features.
        batch_size, num_workers: loader settings. max_rank, missing: as the protocol.

    Raises:
        ValueError: empty splits, query ids absent from the gallery (``missing="raise"``), bad
        images (naming the file).
    """
    from reidkern.metrics.protocols import evaluate_image_reid

    if not dataset.query or not dataset.gallery:
        raise ValueError(f"dataset: {dataset.name!r} has an empty query or gallery split")
    t0 = time.perf_counter()
    q = extract_split(model, dataset.query, height, width, batch_size, flip, num_workers, progress, "query")
    g = extract_split(model, dataset.gallery, height, width, batch_size, flip, num_workers, progress, "gallery")
    t1 = time.perf_counter()
    result = evaluate_image_reid(q.feats, g.feats, q.pids, g.pids, q.camids, g.camids, metric=metric,
                                 max_rank=min(max_rank, len(g.feats)), missing=missing, progress=False)
    return ZeroShotResult(result, q, g, t1 - t0, time.perf_counter() - t1)


def load_backbone(name: str, weights: Optional[str]):
    """A test-time backbone by name from local weights (no download): ``osnet_x0_25`` from an ONNX
    export (e.g. ``reid-mini/osnet_x0_25_msmt17.onnx``) or a torchreid checkpoint."""
    if name != "osnet_x0_25":
        raise ValueError(f"model: only 'osnet_x0_25' is available for zero-shot evaluation, got {name!r}")
    from reidkern.models.backbones.osnet import osnet_x0_25

    return osnet_x0_25(weights).eval()

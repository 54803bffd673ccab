"""Evaluation of a model on a query/gallery pair of record lists, by the recipe's protocol."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from .extract import Features, extract_features
from .loader import eval_loader

__all__ = ["build_eval_dataset", "features_of", "evaluate_model", "score_features", "choose_rerank_params",
           "save_npz"]


def build_eval_dataset(recipe, records: Sequence):
    """Test-time dataset of ``records`` (the recipe's test transforms, no augmentation)."""
    from reidkern.data import ImageDataset, build_transforms

    tf = (recipe.build_transforms or build_transforms)(recipe.height, recipe.width, train=False)
    make = recipe.build_dataset or ImageDataset
    return make(list(records), tf)


def _extract_fn(model, recipe, device):
    """The recipe's ``extract``, or its onnxruntime twin (``recipe.onnx_eval`` on CPU)."""
    dev = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    if recipe.onnx_eval and dev.type == "cpu":
        from .export import onnx_extract_fn
        return onnx_extract_fn(model, recipe)
    if recipe.channels_last:
        return lambda m, b: recipe.extract(m, {**b, "img": b["img"].contiguous(memory_format=torch.channels_last)})
    return recipe.extract


def features_of(model, recipe, records: Sequence, *, device=None, amp=None, num_workers: int = 0,
                batch_size: int = 64, progress: bool = True, desc: str = "extract", extract=None) -> Features:
    """``extract_features`` of ``records`` with the recipe's ``extract`` (or ``extract``) and
    ``flip_test``."""
    loader = eval_loader(build_eval_dataset(recipe, records), batch_size=batch_size, num_workers=num_workers)
    fn = extract or _extract_fn(model, recipe, device)
    return extract_features(model, loader, flip=recipe.flip_test, extract=fn, device=device,
                            amp=amp, progress=progress, desc=desc)


def score_features(recipe, q: Features, g: Features, rerank: Optional[bool] = None,
                   rerank_params: Optional[Tuple[int, int, float]] = None) -> Dict[str, float]:
    """Single-query image-ReID scores (Market protocol) of query/gallery features: R1, R5, R10,
    mAP, mINP as fractions, with k-reciprocal re-ranking when ``rerank`` (default
    ``recipe.rerank``) by ``rerank_params`` = ``(k1, k2, lambda_value)`` (default
    ``recipe.rerank_params``)."""
    from reidkern.metrics.protocols import evaluate_image_reid, evaluate_image_reid_distmat

    rerank = recipe.rerank if rerank is None else rerank
    if rerank:
        from reidkern.rerank import k_reciprocal

        qf, gf = q.feats, g.feats
        if recipe.metric == "cosine":  # re-ranking's squared Euclidean on unit vectors = 2 - 2cos
            qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
        k1, k2, lambda_value = rerank_params or recipe.rerank_params
        dist = k_reciprocal(qf, gf, k1=k1, k2=k2, lambda_value=lambda_value)
        res = evaluate_image_reid_distmat(dist, q.pids, g.pids, q.camids, g.camids, max_rank=10)
    else:
        res = evaluate_image_reid(q.feats, g.feats, q.pids, g.pids, q.camids, g.camids,
                                  metric=recipe.metric, max_rank=10)
    return {"R1": res.rank(1), "R5": res.rank(5), "R10": res.rank(10), "mAP": float(res.mAP),
            "mINP": float(res.mINP)}


def evaluate_model(model, recipe, query: Sequence, gallery: Sequence, *, device=None, amp=None,
                   num_workers: int = 0, progress: bool = True, rerank: Optional[bool] = None,
                   both: bool = False, return_features: bool = False,
                   rerank_params: Optional[Tuple[int, int, float]] = None):
    """Extract query and gallery features and score them by the recipe's protocol.

    ``recipe.evaluate`` (task-specific protocols) replaces the image-ReID path when set. With
    ``both``, the plain and the re-ranked scores are returned (re-ranked keys prefixed ``rr_``);
    ``rerank_params`` (default ``recipe.rerank_params``) are the re-ranking's (k1, k2, λ).
    """
    if recipe.evaluate is not None:
        res = dict(recipe.evaluate(model, recipe, query, gallery, device=device, amp=amp,
                                   num_workers=num_workers, progress=progress))
        return (res, None, None) if return_features else res
    fn = _extract_fn(model, recipe, device)
    q = features_of(model, recipe, query, device=device, amp=amp, num_workers=num_workers,
                    progress=progress, desc="query", extract=fn)
    g = features_of(model, recipe, gallery, device=device, amp=amp, num_workers=num_workers,
                    progress=progress, desc="gallery", extract=fn)
    if both:
        out = score_features(recipe, q, g, rerank=False)
        out.update({f"rr_{k}": v for k, v in score_features(recipe, q, g, rerank=True,
                                                            rerank_params=rerank_params).items()})
    else:
        out = score_features(recipe, q, g, rerank=rerank, rerank_params=rerank_params)
    return (out, q, g) if return_features else out


def choose_rerank_params(recipe, q: Features, g: Features) -> Tuple[Tuple[int, int, float], Dict[str, float]]:
    """The ``recipe.rerank_grid`` triple ``(k1, k2, lambda_value)`` whose re-ranked mAP on the
    features ``q``/``g`` (a validation split) is highest; ties go to the earlier triple. Triples
    whose k1 needs more than the split's Q + G − 1 neighbours are left out.

    Returns:
        ``(best_triple, {"k1,k2,lambda_value": mAP, ...})`` (mAP as fractions).

    Raises:
        ValueError: ``recipe.rerank_grid`` empty or None, or no triple fits the split's size.
    """
    if not recipe.rerank_grid:
        raise ValueError(f"recipe.rerank_grid: expected (k1, k2, lambda_value) triples, got {recipe.rerank_grid!r}")
    n = len(q.pids) + len(g.pids)
    grid = [t for t in recipe.rerank_grid if t[0] + 1 <= n]
    if not grid:
        raise ValueError(f"recipe.rerank_grid: every k1 needs more than the {n} validation images")
    scores, best = {}, None
    for params in grid:
        k1, k2, lambda_value = params
        m = score_features(recipe, q, g, rerank=True, rerank_params=(k1, k2, lambda_value))["mAP"]
        scores[f"{k1},{k2},{lambda_value}"] = m
        if best is None or m > best[1]:
            best = ((k1, k2, lambda_value), m)
    return best[0], scores


def save_npz(feats, records: Sequence, path: str) -> str:
    """Write ``feats`` (:class:`Features`) with the records' image paths as the npz ``reidkern eval``
    reads (feats float32 [N, D], pids, camids int64 [N]; plus paths [N] str), atomically."""
    import numpy as np

    from reidkern.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, feats=feats.feats.numpy().astype(np.float32), pids=feats.pids.numpy(),
                     camids=feats.camids.numpy(), paths=np.array([r.path for r in records], dtype=str))
    return path

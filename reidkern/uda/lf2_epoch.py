"""LF2's per-epoch pseudo-labelling (official ``target_train.py``, start of each epoch):

1. the whole target training set through the model in eval mode: the fusion module's (global,
   upper, lower) features, each the sum over the image and its mirror, L2-normalised;
2. one clustering per branch (:class:`reidkern.uda.PseudoLabelStep`);
3. student's and teacher's classifiers re-initialised from the L2-normalised global centroids.

Steps 2–3 are all-or-nothing: if any branch fails, neither the labels, nor the clustering RNG,
nor the classifiers change.
"""
from __future__ import annotations

from typing import Dict, Iterable

import torch
import torch.nn.functional as F

from reidkern.models.lf2 import LF2

from .clustering import PseudoLabels
from .pseudo_label_step import PseudoLabelStep

__all__ = ["BRANCHES", "extract_clustering_features", "pseudo_label_epoch"]

BRANCHES = ("global", "upper", "lower")


@torch.no_grad()
def extract_clustering_features(model: LF2, batches: Iterable, flip: bool = True) -> Dict[str, torch.Tensor]:
    """LF2's clustering features of a whole set, in the order of ``batches``.

    Args:
        model: an :class:`LF2` (run in eval mode here; its mode is restored).
        batches: iterable of image tensors [B, 3, H, W] or batch dicts with ``"img"``.
        flip: add the mirrored image's features before normalising (official).

    Returns:
        {"global", "upper", "lower"}: float32 [N, C] each, rows L2-normalised.
    """
    was_training = model.training
    model.eval()
    out = {b: [] for b in BRANCHES}
    try:
        for batch in batches:
            x = batch["img"] if isinstance(batch, dict) else batch
            feats = model.clustering_features(x)
            if flip:
                feats = [a + b for a, b in zip(feats, model.clustering_features(x.flip(-1)))]
            for b, f in zip(BRANCHES, feats):
                out[b].append(F.normalize(f.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    if not out["global"]:
        raise ValueError("batches: the target set is empty")
    return {b: torch.cat(v) for b, v in out.items()}


def pseudo_label_epoch(model: LF2, step: PseudoLabelStep, features: Dict[str, torch.Tensor]) -> Dict[str, PseudoLabels]:
    """Cluster ``features`` (from :func:`extract_clustering_features`) and apply the result:
    ``step`` keeps the three label sets, the classifiers get the global centroids.

    After the DBSCAN no-cluster fallback (``step.fell_back``) the previous labels stay and the
    classifiers are left as they are. Raises what ``step.run`` raises, with nothing changed.
    """
    dims = {b: tuple(f.shape[1:]) for b, f in features.items()}
    if any(d != (model.channels,) for d in dims.values()):
        raise ValueError(f"features: expected [N, {model.channels}] per branch, got dims {dims}")
    results = step.run(features)
    if not step.fell_back:
        model.set_classifier(torch.from_numpy(results["global"].centers))
    return results

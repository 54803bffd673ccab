"""Eager references of batch_hard_mining and the batch-hard triplet loss.

Two formulations the field uses, kept as oracles and benchmark baselines:

* :func:`batch_hard_mining_reference` — fast-reid style: full B x M distance matrix, boolean
  masks, masked max / min (argmax / argmin, so ties go to the lowest index). Differentiable through
  the distance matrix (autograd over all B x M entries).
* :func:`batch_hard_mining_loop` — torchreid style: one Python iteration per anchor.

Distances (Hermans et al. 2017, "In Defense of the Triplet Loss", L_BH with D = Euclidean), as
reidkern/_metric.py defines them: ``sqeuclidean`` = max(|x|² + |y|² − 2 x·y, 0); ``euclidean`` =
sqrt(clamp(|x|² + |y|² − 2 x·y, min=SQ_CLAMP)) as fast-reid and torchreid compute it; ``cosine`` =
1 − x̂·ŷ with x̂ = x / max(|x|, NORM_EPS) (``F.normalize``).
"""
import torch
import torch.nn.functional as F

from reidkern._metric import METRIC_NAMES as METRICS
from reidkern._metric import NORM_EPS, SQ_CLAMP


def pairwise_distance_matrix(x, y, metric="euclidean"):
    """[B, M] distances between the rows of ``x`` [B, D] and ``y`` [M, D] (see module docstring)."""
    if metric == "cosine":
        return 1.0 - F.normalize(x, dim=1, eps=NORM_EPS) @ F.normalize(y, dim=1, eps=NORM_EPS).t()
    xx = (x * x).sum(1, keepdim=True)
    yy = (y * y).sum(1, keepdim=True).t()
    sq = xx + yy - 2.0 * (x @ y.t())
    if metric == "sqeuclidean":
        return sq.clamp(min=0)
    if metric == "euclidean":
        return sq.clamp(min=SQ_CLAMP).sqrt()
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def candidate_masks(labels, ref_labels, self_offset=-1):
    """``(is_pos, is_neg)`` [B, M] bool: same label except the anchor itself (candidate
    ``i + self_offset``; none when ``self_offset < 0``), and different label."""
    same = labels[:, None] == ref_labels[None, :]
    is_pos = same.clone()
    if self_offset >= 0:
        rows = torch.arange(labels.shape[0], device=labels.device)
        cols = rows + self_offset
        keep = cols < ref_labels.shape[0]
        is_pos[rows[keep], cols[keep]] = False
    return is_pos, ~same


def batch_hard_mining_reference(embeddings, labels, ref_embeddings=None, ref_labels=None,
                                metric="euclidean", self_offset=None):
    """fast-reid-style masked max / min mining.

    Returns ``(dist_ap, dist_an, p_index, n_index)``: [B] distances of the hardest positive and
    negative (0 where none), [B] int64 candidate indices (-1 where none). Differentiable w.r.t. both
    embedding sets.
    """
    if ref_embeddings is None:
        ref_embeddings, ref_labels = embeddings, labels
        self_offset = 0 if self_offset is None else self_offset
    elif self_offset is None:
        self_offset = -1
    dist = pairwise_distance_matrix(embeddings, ref_embeddings, metric)
    is_pos, is_neg = candidate_masks(labels, ref_labels, self_offset)
    has_pos, has_neg = is_pos.any(1), is_neg.any(1)
    if dist.shape[1] == 0:
        empty = torch.full_like(labels, -1)
        zero = embeddings.new_zeros(labels.shape[0]) + 0 * embeddings.sum()
        return zero, zero.clone(), empty, empty.clone()
    p_index = dist.detach().masked_fill(~is_pos, float("-inf")).argmax(1)
    n_index = dist.detach().masked_fill(~is_neg, float("inf")).argmin(1)
    dist_ap = dist.gather(1, p_index[:, None])[:, 0] * has_pos
    dist_an = dist.gather(1, n_index[:, None])[:, 0] * has_neg
    p_index = torch.where(has_pos, p_index, -1)
    n_index = torch.where(has_neg, n_index, -1)
    return dist_ap, dist_an, p_index, n_index


def batch_hard_mining_loop(embeddings, labels, metric="euclidean"):
    """torchreid-style: a Python loop over anchors over the B x B distance matrix (self excluded
    from the positives). Returns ``(dist_ap, dist_an)`` [B]; anchors without a positive or a
    negative get NaN (the caller drops them)."""
    dist = pairwise_distance_matrix(embeddings, embeddings, metric)
    n = dist.shape[0]
    mask = labels[:, None] == labels[None, :]
    nan = embeddings.new_full((1,), float("nan"))
    dist_ap, dist_an = [], []
    for i in range(n):
        pos = mask[i].clone()
        pos[i] = False
        dist_ap.append(dist[i][pos].max().unsqueeze(0) if pos.any() else nan)
        dist_an.append(dist[i][~mask[i]].min().unsqueeze(0) if (~mask[i]).any() else nan)
    return torch.cat(dist_ap), torch.cat(dist_an)


def triplet_loss_fastreid(embeddings, labels, margin=0.3, metric="euclidean"):
    """Batch-hard triplet loss, fast-reid style (masked max / min over B x B matrices):
    mean over valid anchors of relu(dist_ap − dist_an + margin), or softplus(dist_ap − dist_an) when
    ``margin`` is None."""
    dist = pairwise_distance_matrix(embeddings, embeddings, metric)
    n = dist.shape[0]
    is_pos = (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool, device=dist.device)
    is_neg = labels[:, None] != labels[None, :]
    dist_ap = dist.masked_fill(~is_pos, float("-inf")).max(1).values
    dist_an = dist.masked_fill(~is_neg, float("inf")).min(1).values
    valid = is_pos.any(1) & is_neg.any(1)
    diff = (dist_ap - dist_an)[valid]
    per = F.softplus(diff) if margin is None else F.relu(diff + margin)
    return per.sum() / valid.sum().clamp(min=1)


def triplet_loss_torchreid(embeddings, labels, margin=0.3, metric="euclidean"):
    """Batch-hard triplet loss, torchreid style (per-anchor Python loop); same value as
    :func:`triplet_loss_fastreid`."""
    dist_ap, dist_an = batch_hard_mining_loop(embeddings, labels, metric)
    valid = ~(torch.isnan(dist_ap) | torch.isnan(dist_an))
    diff = (dist_ap - dist_an)[valid]
    per = F.softplus(diff) if margin is None else F.relu(diff + margin)
    return per.sum() / valid.sum().clamp(min=1)

"""Batch-hard triplet losses and miner (Hermans et al. 2017; MMT's soft-softmax triplet)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from reidkern._amp import autocast_off
from reidkern._metric import Metric
from reidkern.distributed import all_gather_no_grad, is_distributed
from reidkern.nn.losses._common import gather_candidates, masked_mean, mine
from reidkern.ops import _validate as V
from reidkern.ops.batch_hard_mining import (_large_exponent, _pow2_mul, _validate,
                                            batch_hard_mining)
from reidkern.ops.reference.batch_hard_mining import candidate_masks, pairwise_distance_matrix

_MININGS = ("hard", "weighted")


def _normalize(x):
    """F.normalize of the rows, exact for any finite magnitude: rows beyond 2^32 (float32) are
    scaled by a power of two first, so |x| does not overflow to inf (which would zero them)."""
    return V.normalize_rows(x, dim=-1)


def _at_least_float32(x):
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_metric(metric):
    Metric.from_name(metric)  # ValueError naming the metrics of reidkern/_metric.py


def weighted_example_mining(embeddings, labels, ref_embeddings, ref_labels, self_offset,
                            metric="euclidean"):
    """Softmax-weighted mining (fast-reid's weighted regularised triplet, Ye et al. 2021, AGW):
    dist_ap = Σ_p softmax(d_p) d_p over the positives, dist_an = Σ_n softmin(d_n) d_n over the
    negatives (weights are not detached, as in fast-reid; the anchor itself is not a positive,
    and the softmax is exact, without fast-reid's +1e-6 in the normaliser). Needs every pair, so it
    runs eagerly on the [B, M] distance matrix. Returns ``(dist_ap, dist_an, valid)``."""
    e = _large_exponent(embeddings, ref_embeddings)  # |x|^2 would overflow: mine x * 2^-e
    if e:
        dist = pairwise_distance_matrix(_pow2_mul(embeddings, -e), _pow2_mul(ref_embeddings, -e),
                                        metric)
        dist = dist if metric == "cosine" else _pow2_mul(dist, e if metric == "euclidean" else 2 * e)
        if not bool(torch.isfinite(dist).all()):
            raise ValueError(f"embeddings: {metric} distances beyond {dist.dtype}'s range (largest "
                             f"|x| about 2^{e}); use float64 or rescale the embeddings")
    else:
        dist = pairwise_distance_matrix(embeddings, ref_embeddings, metric)
    is_pos, is_neg = candidate_masks(labels, ref_labels, self_offset)
    has_pos, has_neg = is_pos.any(1, keepdim=True), is_neg.any(1, keepdim=True)
    neg_inf = dist.new_tensor(float("-inf"))
    # Rows without any candidate get uniform logits (no NaN), and are masked out below.
    logit_p = torch.where(has_pos, torch.where(is_pos, dist, neg_inf), dist.new_zeros(()))
    logit_n = torch.where(has_neg, torch.where(is_neg, -dist, neg_inf), dist.new_zeros(()))
    w_p = torch.softmax(logit_p, dim=1) * is_pos
    w_n = torch.softmax(logit_n, dim=1) * is_neg
    return (dist * w_p).sum(1), (dist * w_n).sum(1), (has_pos & has_neg)[:, 0]


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017, the batch-hard loss L_BH), fused mining.

    ``loss = mean over valid anchors of relu(dist_ap − dist_an + margin)`` (the
    ``MarginRankingLoss(dist_an, dist_ap, 1)`` form of torchreid / fast-reid); ``margin=None`` gives
    the soft margin ``softplus(dist_ap − dist_an)``. ``mining="weighted"`` replaces the hardest pair
    by fast-reid's softmax-weighted positives / softmin-weighted negatives (weighted regularised
    triplet; use it with ``margin=None`` as fast-reid does). Anchors with no positive or no negative
    in the batch are left out of the mean (loss 0 if none is valid). Unlike fast-reid's masked max,
    the anchor itself is never its own positive (fast-reid counts it, at distance ~0, which only
    matters for anchors whose identity has a single image in the batch: here they are left out).

    Args:
        margin: float >= 0, or None for the soft margin. Default 0.3.
        metric: "euclidean" (sqrt(clamp(sq, 1e-12)), as fast-reid / torchreid), "sqeuclidean",
            "cosine" (1 − cos).
        mining: "hard" (reidkern.ops.batch_hard_mining kernel) or "weighted" (eager).
        normalize_feature: L2-normalise the embeddings first.
        gather: with ``torch.distributed`` initialised, mine the local anchors against the batch
            gathered from every process; the loss is the global mean and the gradient reaching the
            local embeddings equals that of the single-process loss on the concatenated batch (see
            reidkern.distributed; DDP then averages parameter gradients over processes).
        backend: kernel backend for the mining op (None: the device default).

    Shapes: ``forward(embeddings [B, D] float, labels [B] int) -> scalar``.
    """

    def __init__(self, margin=0.3, metric="euclidean", mining="hard", normalize_feature=False,
                 gather=False, backend=None):
        super().__init__()
        if margin is not None and not margin >= 0:
            raise ValueError(f"margin must be >= 0 or None (soft margin), got {margin!r}")
        if mining not in _MININGS:
            raise ValueError(f"mining must be one of {_MININGS}, got {mining!r}")
        _check_metric(metric)
        self.margin, self.metric, self.mining = margin, metric, mining
        self.normalize_feature, self.gather, self.backend = normalize_feature, gather, backend

    def extra_repr(self):
        return f"margin={self.margin}, metric={self.metric!r}, mining={self.mining!r}"

    def forward(self, embeddings, labels):
        if self.normalize_feature:
            embeddings = _normalize(embeddings)
        if self.mining == "hard":
            res = mine(embeddings, labels, self.metric, self.gather, self.backend)[0]
            dist_ap, dist_an, valid = res.dist_ap, res.dist_an, res.valid
        else:
            embeddings, labels, _, _ = _validate(embeddings, labels, None, None, self.metric, None)
            ref, ref_labels, offset = gather_candidates(embeddings, labels, self.gather)
            if ref is None:
                ref, ref_labels, offset = embeddings, labels, 0
            # distances in float32 at least, autocast off (|x|² + |y|² − 2x·y cancels in
            # bfloat16/float16), as batch_hard_mining and torch's cdist
            with autocast_off(embeddings.device.type):
                dist_ap, dist_an, valid = weighted_example_mining(_at_least_float32(embeddings), labels,
                                                                  _at_least_float32(ref), ref_labels,
                                                                  offset, self.metric)
        diff = dist_ap - dist_an
        per = F.softplus(diff) if self.margin is None else F.relu(diff + self.margin)
        return masked_mean(per, valid, self.gather)


def _pair_distance(a, b, metric):
    """Row-wise distance between ``a`` [B, D] and ``b`` [B, D] by the formulas of batch_hard_mining
    (huge rows are scaled by a power of two and the distance scaled back, as the op does)."""
    e = _large_exponent(a, b) if a.numel() else 0
    if e:
        d = _pair_distance(_pow2_mul(a, -e), _pow2_mul(b, -e), metric)
        return d if metric == "cosine" else _pow2_mul(d, e if metric == "euclidean" else 2 * e)
    if metric == "cosine":
        return 1.0 - (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1)
    sq = (a * a).sum(1) + (b * b).sum(1) - 2.0 * (a * b).sum(1)
    return sq.clamp(min=0) if metric == "sqeuclidean" else sq.clamp(min=1e-12).sqrt()


class SoftTripletLoss(nn.Module):
    """Softmax triplet loss with batch-hard mining (MMT, Ge et al. ICLR 2020, the softmax-triplet
    and soft softmax-triplet losses; LF2's loss).

    Per anchor, ``ls = log_softmax([dist_ap, dist_an])`` (as MMT writes it), then

    * hard targets (``teacher_embeddings`` not given): ``loss = −margin·ls_ap − (1 − margin)·ls_an``;
      with ``margin=0`` this is ``softplus(dist_ap − dist_an)`` (LF2's official loss),
    * soft targets (``teacher_embeddings`` [B, D] given, MMT's soft-softmax-triplet): targets =
      softmax of the teacher's ``[dist_ap, dist_an]`` evaluated at the *student's* mined indices
      (detached); ``loss = −(targets · ls).sum(over the 2)``,

    averaged over valid anchors (those with a positive and a negative).

    Args:
        margin: target weight of the positive in [0, 1] (hard targets); default 0.
        metric: mining distance (MMT / LF2: "euclidean").
        normalize_feature: L2-normalise student and teacher embeddings first (MMT's option).
        gather: mine across processes (see :class:`TripletLoss`); teacher embeddings are gathered
            without gradient.
        backend: kernel backend for the mining op.
    """

    def __init__(self, margin=0.0, metric="euclidean", normalize_feature=False, gather=False,
                 backend=None):
        super().__init__()
        if margin is not None and not 0 <= margin <= 1:
            raise ValueError(f"margin must be in [0, 1] (target weight of the positive), got {margin!r}")
        _check_metric(metric)
        self.margin, self.metric, self.normalize_feature = margin, metric, normalize_feature
        self.gather, self.backend = gather, backend

    def forward(self, embeddings, labels, teacher_embeddings=None):
        if self.normalize_feature:
            embeddings = _normalize(embeddings)
        res, emb, _, _, _ = mine(embeddings, labels, self.metric, self.gather, self.backend)
        ls = F.log_softmax(torch.stack([res.dist_ap, res.dist_an], dim=1), dim=1)
        if teacher_embeddings is None:
            if self.margin is None:
                raise ValueError("SoftTripletLoss with margin=None needs teacher_embeddings")
            per = -self.margin * ls[:, 0] - (1.0 - self.margin) * ls[:, 1]
        else:
            with torch.no_grad():
                t = V.floating(V.as_tensor(teacher_embeddings, "teacher_embeddings"),
                               "teacher_embeddings")
                if not torch.compiler.is_compiling():
                    V.check_finite(t, "teacher_embeddings")
                if t.shape != emb.shape:
                    raise ValueError(f"teacher_embeddings has shape {tuple(t.shape)}, expected "
                                     f"{tuple(emb.shape)} (embeddings)")
                t = t.to(emb.dtype)
                if self.normalize_feature:
                    t = _normalize(t)
                t_ref = all_gather_no_grad(t) if (self.gather and is_distributed()) else t
                t_ap = _pair_distance(t, t_ref[res.p_index.clamp(min=0)], self.metric)
                t_an = _pair_distance(t, t_ref[res.n_index.clamp(min=0)], self.metric)
                targets = torch.softmax(torch.stack([t_ap, t_an], dim=1), dim=1)
            per = -(targets * ls).sum(1)
        return masked_mean(per, res.valid, self.gather)


class BatchHardMiner(nn.Module):
    """Batch-hard miner in the pytorch-metric-learning shape.

    ``miner(embeddings [B, D], labels [B], ref_emb=None, ref_labels=None)`` returns
    ``(anchors, positives, negatives)``: int64 index tensors [V] over the V valid anchors (those
    with a positive and a negative); positives / negatives index ``ref_emb`` when given, else the
    batch. Mining as in :func:`reidkern.ops.batch_hard_mining` (ties to the lowest index).
    The last distances are kept in ``self.last_result`` (a BatchHardResult, detached).
    """

    def __init__(self, metric="euclidean", backend=None):
        super().__init__()
        _check_metric(metric)
        self.metric, self.backend = metric, backend
        self.last_result = None

    @torch.no_grad()
    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        res = batch_hard_mining(embeddings, labels, self.metric, ref_embeddings=ref_emb,
                                ref_labels=ref_labels, backend=self.backend)
        self.last_result = res
        anchors = torch.nonzero(res.valid).flatten()
        return anchors, res.p_index[anchors], res.n_index[anchors]

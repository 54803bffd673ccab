"""LF2's eager twin: the same stage-2 loss written with the field's standard eager blocks.

The LF2 network is made of standard layers already (convolutions, pooling, Linear, BatchNorm); the
parts reidkern replaces are the batch-hard mining and soft triplet loss (reidkern's fused
``batch_hard_mining`` kernel). Here they are computed as MMT / the official LF2 code does: the full
[B, B] Euclidean distance matrix ``sqrt(clamp(‖x‖² + ‖y‖² − 2xyᵀ, 1e-12))``, the hardest positive
as a masked max (the anchor itself is a candidate, at ~1e-6), the hardest negative as a masked min,
then ``log_softmax([d_ap, d_an])``. Under P×K sampling (K ≥ 2) every anchor has another positive
farther than itself, so this equals reidkern's loss, which never takes the anchor as its own
positive; tests check it in float64, values and gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_label_smoothing
from .lf2 import LF2, LF2Output

__all__ = ["eager_soft_triplet", "EagerLF2Loss", "LF2Eager"]


def eager_soft_triplet(emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """MMT's softmax-triplet loss with dense batch-hard mining: [B, D], [B] → scalar."""
    xx = (emb * emb).sum(1, keepdim=True)
    dist = (xx + xx.t() - 2.0 * emb @ emb.t()).clamp(min=1e-12).sqrt()
    same = labels[:, None].eq(labels[None, :])
    big = torch.finfo(dist.dtype).max
    dist_ap = torch.where(same, dist, dist.new_full((), -big)).amax(1)
    dist_an = torch.where(same, dist.new_full((), big), dist).amin(1)
    ls = F.log_softmax(torch.stack([dist_ap, dist_an], 1), dim=1)
    return (-margin * ls[:, 0] - (1.0 - margin) * ls[:, 1]).mean()


class EagerLF2Loss(nn.Module):
    """:class:`reidkern.models.lf2.LF2Loss` with :func:`eager_soft_triplet` (same arguments,
    same ``forward``)."""

    def __init__(self, label_smoothing: float = 0.1, part_weight: float = 0.5, margin: float = 0.0):
        super().__init__()
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.part_weight, self.margin = part_weight, margin

    def forward(self, out_g: LF2Output, y_g, out_u: LF2Output, y_u, out_l: LF2Output, y_l):
        ce = F.cross_entropy(out_g.logits, y_g, label_smoothing=self.label_smoothing)
        tri_g = eager_soft_triplet(out_g.global_feat, y_g, self.margin)
        tri_u = eager_soft_triplet(out_u.upper_feat, y_u, self.margin)
        tri_l = eager_soft_triplet(out_l.lower_feat, y_l, self.margin)
        loss = ce + tri_g + self.part_weight * (tri_u + tri_l)
        return loss, {"loss": float(loss.detach())}


class LF2Eager(nn.Module):
    """The eager twin of an :class:`~reidkern.models.lf2.LF2`: the same parameters (it wraps the
    same model), the loss from :class:`EagerLF2Loss`. Same ``forward_backbone`` /
    ``forward_head`` / ``loss`` interface as ``LF2``."""

    def __init__(self, model: LF2):
        super().__init__()
        self.model = model
        self.criterion = EagerLF2Loss()

    def forward_backbone(self, img):
        return self.model.forward_backbone(img)

    def forward_head(self, featmap):
        return self.model.forward_head(featmap)

    def loss(self, out: LF2Output, y_g, y_u, y_l):
        return self.criterion(out, y_g, out, y_u, out, y_l)

"""Bidirectional cross-modal ranking loss with random semi-hard negatives (LGUR, Shao et al. ACM MM
2022; the ranking loss of text-to-image person ReID)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from reidkern.ops import _validate as V


def _one_direction(sim, labels, margin, generator):
    """Per-anchor hinge for anchors = rows of ``sim`` [B, B] (candidates = columns, positive = the
    diagonal). Returns ``(per_anchor [B], valid [B])``."""
    b = sim.shape[0]
    s = sim.detach()
    pos = s.diagonal()
    neg_ok = ~torch.eye(b, dtype=torch.bool, device=s.device)
    if labels is not None:
        neg_ok = neg_ok & (labels[:, None] != labels[None, :])
    semi = neg_ok & (s < pos[:, None]) & (s > pos[:, None] - margin)
    gen_device = generator.device if generator is not None else s.device
    draw = torch.rand((b, b), generator=generator, device=gen_device).to(s.device)
    semi_idx = draw.masked_fill(~semi, -1.0).argmax(1)   # uniform among the semi-hard negatives
    hard_idx = s.masked_fill(~neg_ok, float("-inf")).argmax(1)  # hardest: most similar negative
    neg_idx = torch.where(semi.any(1), semi_idx, hard_idx)
    valid = neg_ok.any(1)
    per = F.relu(margin - sim.diagonal() + sim.gather(1, neg_idx[:, None])[:, 0])
    return per, valid


class CrossModalRankingLoss(nn.Module):
    """Bidirectional ranking loss between paired image and text embeddings (LGUR).

    Similarities are cosine: ``S = norm(image) @ norm(text)ᵀ`` [B, B]. Image→text: anchor image i,
    positive text i (its pair), one negative text j ≠ i drawn uniformly at random (``generator``)
    among the *semi-hard* ones, S[i, neg] < S[i, i] and S[i, neg] > S[i, i] − margin; when an anchor
    has none, its hardest negative (largest S[i, j]) is used. When ``labels`` are given, candidates
    with the anchor's identity label are never negatives. Per anchor:
    ``relu(margin − S[i, i] + S[i, neg])``. Text→image: the same on Sᵀ. Negatives are chosen on
    detached similarities; the gradient flows through S[i, i] and S[i, neg].

    ``reduction="sum"`` (LGUR): sum over anchors of both directions; ``"mean"``: mean over the
    anchors of each direction that have a negative, summed over the two directions. Anchors with no
    possible negative (B = 1, or every other pair shares their label) are left out.

    Args:
        margin: default 0.3. reduction: "sum" (default) or "mean".
        generator: default ``torch.Generator`` for the draws (a per-call one can be passed to
            forward); None uses torch's global generator.

    Shapes: ``forward(image [B, D], text [B, D], labels [B] int or None, generator=None) -> scalar``.
    """

    def __init__(self, margin=0.3, reduction="sum", generator=None):
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        self.margin, self.reduction, self.generator = float(margin), reduction, generator

    def forward(self, image, text, labels=None, generator=None):
        image = V.floating(V.as_tensor(image, "image"), "image")
        text = V.floating(V.as_tensor(text, "text"), "text")
        V.check_ndim(image, 2, "image", "[B, D]")
        V.check_ndim(text, 2, "text", "[B, D]")
        if image.shape != text.shape:
            raise ValueError(f"image {tuple(image.shape)} and text {tuple(text.shape)} must both be [B, D]")
        if image.shape[1] == 0:
            raise ValueError("image and text have feature dimension D = 0")
        if labels is not None:
            labels = V.check_ids(labels, image.shape[0], "labels", "B (rows of image)", image.device)
        if not torch.compiler.is_compiling():
            V.check_finite(image, "image")
            V.check_finite(text, "text")
        gen = generator if generator is not None else self.generator
        sim = V.normalize_rows(image, dim=1) @ V.normalize_rows(text, dim=1).t()
        total = sim.new_zeros(())
        if sim.shape[0] == 0:  # empty batch: zero loss (still connected to the graph)
            return total + 0 * sim.sum()
        for s in (sim, sim.t()):
            per, valid = _one_direction(s, labels, self.margin, gen)
            part = torch.where(valid, per, per.new_zeros(())).sum()
            if self.reduction == "mean":
                part = part / valid.sum().clamp(min=1)
            total = total + part
        return total

"""CAL's part-aligned centre loss (PCL).

Source: CAL (Concordant Attention Learning, ICCV 2023), "part-aligned metric learning":

    L_pcl = Σ_{i,j} [ g(f_i^{VI}, c_j^I) + g(f_i^{IV}, c_j^V)
                      + s(c_i^I, c_j^V) + s(c_i^I, c_j^I) + s(c_i^V, c_j^V) ]
    g(f, c) = 1(y_f = y_c) · ‖f − c‖₂,    s(c_i, c_j) = 1(y_i ≠ y_j) · [σ − ‖c_i − c_j‖₂]₊

with c_j^V / c_j^I the batch centre of identity y_j over the self-refined features f^{V,V} /
f^{I,I}, and f^{VI}_i = A(T^V_j; P^I_i) the visible map of a same-identity sample refined with
infrared sample i's part queries (so it is aligned, part by part, with f^{I,I}_i); f^{IV}
likewise. The five terms are exactly the ones the paper's sum lists (it lists no
s(c^V, c^I) term; s(c^I_i, c^V_j) over all i, j already covers every visible–infrared pair).
"""
import torch
from torch import nn


def _centres(feats, pids, ids):
    """Mean of feats [N, D] per identity in ids [U] → [U, D] (every id has ≥ 1 sample)."""
    onehot = (pids[None, :] == ids[:, None]).to(feats.dtype)  # [U, N]
    return (onehot @ feats) / onehot.sum(1, keepdim=True)


class PartAlignedCenterLoss(nn.Module):
    """CAL's PCL over part-aligned refined features.

    Args:
        margin: σ of the push term ``[σ − ‖c_i − c_j‖₂]₊`` (unverified; no public code).
        reduction: ``"mean"`` (default): each of the five terms is averaged over its pairs —
            g over the samples of its modality, s over the ordered pairs of different identities —
            and the five averages are summed, so the loss does not grow with the batch;
            ``"sum"``: the paper's Σ_{i,j} literally (centres indexed by identity).

    Forward:
        self_feats: [B, Np, C] self-refined features f^{k,k} of each sample (its own map, its own
            parts), float.
        cross_feats: [B, Np, C] cross-refined features of each sample: for an infrared sample i,
            f^{VI}_i (a same-identity visible map refined with i's parts); for a visible one, f^{IV}_i.
        pids: int64 [B]; modality: int [B], 0 = visible, 1 = infrared.
        Distances are taken on the flattened Np·C part-aligned vectors.

    Returns a scalar tensor.

    Raises:
        ValueError: mismatched shapes, an unknown reduction, or an identity without both
            modalities in the batch (its centres cannot be formed; use a visible–infrared sampler).
    """

    def __init__(self, margin=1.0, reduction="mean"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.margin, self.reduction = float(margin), reduction

    def forward(self, self_feats, cross_feats, pids, modality):
        if self_feats.dim() != 3 or cross_feats.shape != self_feats.shape:
            raise ValueError(f"self_feats and cross_feats must both be [B, Np, C], got "
                             f"{tuple(self_feats.shape)} and {tuple(cross_feats.shape)}")
        B = self_feats.shape[0]
        if pids.shape != (B,) or modality.shape != (B,):
            raise ValueError(f"pids and modality must be [B] = [{B}], got {tuple(pids.shape)} and "
                             f"{tuple(modality.shape)}")
        vis, inf = modality == 0, modality == 1
        ids = torch.unique(pids)
        have_v = (pids[vis][None, :] == ids[:, None]).any(1)
        have_i = (pids[inf][None, :] == ids[:, None]).any(1)
        if not bool((have_v & have_i).all()):
            missing = ids[~(have_v & have_i)].tolist()
            raise ValueError(f"pids: identities {missing} lack a visible or an infrared sample in the "
                             "batch; PCL needs both modalities of every identity")
        f_self, f_cross = self_feats.flatten(1), cross_feats.flatten(1)
        c_v = _centres(f_self[vis], pids[vis], ids)  # [U, D]
        c_i = _centres(f_self[inf], pids[inf], ids)
        pos = {int(u): n for n, u in enumerate(ids.tolist())}
        slot = torch.tensor([pos[int(p)] for p in pids.tolist()], device=pids.device)
        # g terms: pull each cross-refined feature to the centre whose queries it shares.
        g_vi = (f_cross[inf] - c_i[slot[inf]]).norm(dim=1)  # f^{VI}_i vs c^I of its identity
        g_iv = (f_cross[vis] - c_v[slot[vis]]).norm(dim=1)  # f^{IV}_i vs c^V
        # s terms: push centres of different identities at least σ apart.
        U = ids.numel()
        other = ~torch.eye(U, dtype=torch.bool, device=ids.device)

        def push(a, b):
            # Explicit differences, not torch.cdist (its matrix-product path is inexact near 0).
            return (self.margin - (a[:, None] - b[None]).norm(dim=-1)).clamp_min(0)[other]

        terms = [g_vi, g_iv, push(c_i, c_v), push(c_i, c_i), push(c_v, c_v)]
        if self.reduction == "sum":
            return sum(t.sum() for t in terms)
        return sum(t.mean() if t.numel() else t.sum() for t in terms)

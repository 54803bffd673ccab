"""CAL from the field's standard eager blocks: the "eager twin" of :class:`reidkern.models.CAL`.

The standard way a paper's code writes it: the batch split by modality and each modality's DRM
run on its part — max-pools, one 1x1 reduce conv per pool, concatenation, the score conv, softmax,
``torch.topk`` per part, ``gather`` of the kept tokens for the weighted mean and ``scatter`` of the
kept scores into Ŝ (``top_k_token_aggregation_reference``) — then put back in batch order; TSAA as
its equations read, matmul + softmax attention (``target_aware_attention_reference``), called once
on the images' own maps (self-refinement) and once more on the partners' maps gathered from the
batch (cross-refinement). It runs the model's own parameters (it holds the model) and is the
float64 oracle of tests/test_cal.py and the baseline of benchmarks/model_cases/cal.py.
"""
import torch
from torch import nn

from reidkern.nn.attention.reference import target_aware_attention_reference, top_k_token_aggregation_reference

from .cal import CAL

__all__ = ["CALEager", "drm_eager", "refine_eager"]


def drm_eager(model, fmap, groups):
    """Each modality's DRM on its images. groups: [(modality code, int64 indices)] →
    (parts [B, Np, C], selected Ŝ [B, HW, Np]) in batch order."""
    parts = selected = None
    for code, idx in groups:
        p, _, s = top_k_token_aggregation_reference(model.drm[code], fmap.index_select(0, idx))
        if parts is None:
            parts = p.new_zeros(fmap.shape[0], *p.shape[1:])
            selected = s.new_zeros(fmap.shape[0], *s.shape[1:])
        parts, selected = parts.index_copy(0, idx, p), selected.index_copy(0, idx, s)
    return parts, selected


def refine_eager(model, tokens, parts, partner):
    """TSAA on the own maps, then (with partner) on the partners' maps: (f_self, S_self, f_cross,
    S_cross), features [B, Np, C] and attention [B, Np, HW]."""
    f_self, a_self = target_aware_attention_reference(model.tsaa, tokens, parts, return_weights=True)
    if partner is None:
        return f_self, a_self, None, None
    f_cross, a_cross = target_aware_attention_reference(model.tsaa, tokens.index_select(0, partner), parts,
                                                        return_weights=True)
    return f_self, a_self, f_cross, a_cross


class CALEager(nn.Module):
    """The eager twin of a :class:`CAL` (holds it: same parameters, buffers and matching record).

    ``forward``, ``forward_backbone``, ``forward_head`` and ``loss`` take and return what CAL's do.
    """

    def __init__(self, model: CAL):
        super().__init__()
        self.model = model

    def forward(self, img, modality, pids=None, partner=None):
        return self.model(img, modality, pids, partner, eager=True)

    def forward_backbone(self, img, modality):
        return self.model.forward_backbone(img, modality)

    def forward_head(self, fmap, modality, pids=None, partner=None):
        return self.model.forward_head(fmap, modality, pids, partner, eager=True)

    def loss(self, out, record=True):
        return self.model.loss(out, record)

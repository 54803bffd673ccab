"""LGUR (ACM MM 2022) granularity-unification layers: DGA (dictionary-based granularity alignment)
and PGU (prototype-based granularity unification), as in the official code (see
papers/README.md)."""
import torch
from torch import nn

from reidkern.nn.attention.cross import TemplateCrossAttention


class DictionaryCrossAttention(nn.Module):
    """LGUR DGA: tokens reconstructed from a multi-modality shared dictionary of atoms.

    ``T_re = MHA(T, D, D)`` (text) and ``V_re = MHA(V, D, D) ⊙ M`` (image, ``foreground=True``)
    with ``M = sigmoid(Linear(dim → 1)(V))`` per token; at training time the image tokens also
    attend to the paired caption tokens with the same weights: ``V_g = MHA(V, T, T) ⊙ M`` (pass
    ``context`` and its ``context_padding_mask``).

    state_dict names: ``dictionary`` [num_atoms, dim] (randn init), ``attn``
    (:class:`TemplateCrossAttention`, bias-free q/k/v, shared pre-LN, FFN dim→ffn_dim→dim),
    ``mask_head`` (Linear(dim, 1)).

    Defaults are LGUR's: 400 atoms of 384, 6 heads x 64, FFN 384→768→384.
    Input tokens [B, L, dim] (+ optional padding mask for context); output [B, L, dim].
    """

    def __init__(self, dim=384, num_atoms=400, num_heads=6, head_dim=64, ffn_dim=768,
                 dropout=0.0, backend=None):
        super().__init__()
        self.dictionary = nn.Parameter(torch.randn(num_atoms, dim))
        self.attn = TemplateCrossAttention(dim, num_heads, head_dim, qkv_bias=False, ffn_dim=ffn_dim,
                                           dropout=dropout, backend=backend)
        self.mask_head = nn.Linear(dim, 1)

    def forward(self, tokens, foreground=False, context=None, context_padding_mask=None):
        if context is None:
            out = self.attn(tokens, self.dictionary)  # atoms shared by the batch, no copy
        else:
            out = self.attn(tokens, context, key_padding_mask=context_padding_mask)
        if foreground:
            out = out * torch.sigmoid(self.mask_head(tokens))
        return out


class PrototypeUnification(nn.Module):
    """LGUR PGU: K shared prototypes attend over the tokens, then K separate projections.

    ``F̃ = concat_i W_i(MHA_2(p_i, F, F))``: ``num_layers`` cross-attention blocks (prototypes
    as queries, broadcast over the batch in the first), then one bias-free Linear(dim → out_dim)
    per prototype.

    state_dict names: ``prototypes`` [K, dim], ``layers.{i}`` (:class:`TemplateCrossAttention`),
    ``projections.{k}`` (Linear(dim, out_dim, bias=False)).
    Defaults are LGUR's: K = 6, 2 layers, 6 heads x 512, FFN 384→512→384, out_dim 512.
    Input tokens [B, L, dim] (+ key_padding_mask [B, L]); output [B, K, out_dim].
    """

    def __init__(self, dim=384, num_prototypes=6, num_layers=2, num_heads=6, head_dim=512,
                 ffn_dim=512, out_dim=512, dropout=0.0, backend=None):
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim))
        self.layers = nn.ModuleList(
            TemplateCrossAttention(dim, num_heads, head_dim, qkv_bias=False, ffn_dim=ffn_dim,
                                   dropout=dropout, backend=backend) for _ in range(num_layers))
        self.projections = nn.ModuleList(nn.Linear(dim, out_dim, bias=False) for _ in range(num_prototypes))

    def forward(self, tokens, key_padding_mask=None):
        x = self.prototypes
        for layer in self.layers:
            x = layer(x, tokens, key_padding_mask=key_padding_mask)
        if x.dim() == 2:  # no layers
            x = x.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return torch.stack([proj(x[:, i]) for i, proj in enumerate(self.projections)], dim=1)

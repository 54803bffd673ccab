"""DPTI part-template initialisation (Dynamic Template Initialization, arXiv 2208.11440, Eq. 5–6)."""
import torch
from torch import nn

from reidkern._amp import autocast_enabled
from reidkern.ops.template_attention import template_attention


class PartTemplateInit(nn.Module):
    """N learned part queries build per-image part templates by a simplified cross-attention.

    Eq. 5: ``γ_i = A_lᵀ q_{t,i}`` (unscaled logits over the L tokens of A_l [B, L, d]);
    Eq. 6: ``t_i = W_{t,v} A_l softmax(γ_i)``; part presence (adaptive part weighting):
    ``ρ = softmax_i(mean_j γ_ij)`` — scale part i's vector by ``N ρ_i`` before concatenation.

    state_dict names: ``part_queries`` [N, d] (q_{t,i}), ``to_v`` (Linear(d, d, bias=False),
    W_{t,v}). Output: ``(templates [B, N, d], rho [B, N])``; with a key_padding_mask [B, L]
    (True = padding) the means run over the valid tokens.

    Args:
        dim: token width d. num_parts: N (unverified in the paper; default 6).
        scale: logit scale, 1.0 as in Eq. 5 (use d**-0.5 for a scaled variant).
        rho_temperature: ρ = softmax_i(mean_j γ_ij / rho_temperature); 1.0 as in the paper.
    """

    def __init__(self, dim, num_parts=6, scale=1.0, backend=None, rho_temperature=1.0):
        super().__init__()
        self.part_queries = nn.Parameter(torch.randn(num_parts, dim) * dim ** -0.5)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.scale, self.backend, self.rho_temperature = scale, backend, float(rho_temperature)

    def forward(self, tokens, key_padding_mask=None):
        if tokens.dim() != 3 or tokens.shape[2] != self.part_queries.shape[1]:
            raise ValueError(f"tokens must be [B, L, {self.part_queries.shape[1]}], got {tuple(tokens.shape)}")
        a = tokens.unsqueeze(1)  # [B, 1, L, d]: keys = values = A_l
        q = self.part_queries
        if autocast_enabled(tokens.device.type):  # A_l comes in autocast's dtype: so do the
            q = q.to(tokens.dtype)  # queries (as nn.Linear casts its weight); template_attention wants one dtype
        q = q.view(1, 1, *q.shape)
        out, _, mean_logit = template_attention(q, a, a, key_padding_mask, scale=self.scale,
                                                return_mean_logit=True, backend=self.backend)
        templates = self.to_v(out.squeeze(1))  # W_{t,v} (A softmax(γ)) = (W A) softmax(γ)
        rho = torch.softmax(mean_logit.squeeze(1) / self.rho_temperature, dim=-1)
        return templates, rho

"""CAL (ICCV 2023) layers: discriminative region mining (part scoring + top-k token aggregation)
and the target-aware spatial attention adaptor (TSAA)."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from reidkern.ops.template_attention import template_attention
from reidkern.ops.topk_token_aggregate import topk_token_aggregate


class TopKTokenAggregation(nn.Module):
    """CAL DRM: part scores per token, then per part the score-weighted mean of its top-k tokens.

    Scoring net γ_θ: the feature map X [B, C, H, W] goes through max-pools of several sizes
    (stride 1, same size), each "downsampled" to ``reduced_channels`` by a 1x1 conv, concatenated
    on channels, and a 1x1 conv gives N_p part scores per token, softmax over the parts → S
    [B, HW, N_p]. Then ``P = Ŝᵀ T / Σ Ŝ`` with Ŝ = top-k(S, N_k), N_k = ceil(alpha·HW/N_p)
    (fused op :func:`reidkern.ops.topk_token_aggregate`).

    state_dict names: ``reduce.{i}`` (Conv2d(C, reduced_channels, 1), one per pool size),
    ``score`` (Conv2d(len(pool_sizes)·reduced_channels, num_parts, 1)).
    pool_sizes, reduced_channels, num_parts and alpha are unverified (no public code).

    Returns ``(parts [B, N_p, C], scores S [B, HW, N_p], selected Ŝ [B, HW, N_p])``;
    :meth:`diversity_loss` gives CAL's L_div = Σ triu(ŜᵀŜ, 1).
    """

    def __init__(self, in_channels=2048, num_parts=6, alpha=0.5, pool_sizes=(1, 3, 5),
                 reduced_channels=256, backend=None):
        super().__init__()
        self.pool_sizes, self.num_parts, self.alpha, self.backend = tuple(pool_sizes), num_parts, alpha, backend
        self.reduce = nn.ModuleList(nn.Conv2d(in_channels, reduced_channels, 1) for _ in pool_sizes)
        self.score = nn.Conv2d(len(pool_sizes) * reduced_channels, num_parts, 1)

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"x must be a feature map [B, C, H, W], got {tuple(x.shape)}")
        feats = [conv(x if s == 1 else F.max_pool2d(x, s, stride=1, padding=s // 2))
                 for s, conv in zip(self.pool_sizes, self.reduce)]
        scores = self.score(torch.cat(feats, dim=1)).flatten(2).transpose(1, 2).softmax(dim=-1)
        tokens = x.flatten(2).transpose(1, 2)  # [B, HW, C] (the op makes channels contiguous)
        parts, _, selected = topk_token_aggregate(scores, tokens, alpha=self.alpha, backend=self.backend)
        return parts, scores, selected

    @staticmethod
    def diversity_loss(selected):
        """CAL's L_div = Σ_{i<j} (ŜᵀŜ)_{ij}, averaged over the batch; selected Ŝ [B, HW, N_p]."""
        gram = selected.transpose(1, 2) @ selected
        return torch.triu(gram, diagonal=1).sum(dim=(1, 2)).mean()


def _instance_norm(x, eps=1e-5):
    """IN over the channels of each token/query (last dim), no affine."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


class TargetAwareAttention(nn.Module):
    """CAL TSAA: ``A(T; P) = softmax(P̂ T̂ᵀ / √d) T ⊗ MLP₃(P)``.

    ``T̂ = MLP₁(IN(T))``, ``P̂ = MLP₂(IN(P))`` with IN the instance norm of each token/query over
    its channels; ⊗ is a query-driven channel gate ``sigmoid(MLP₃(P))``.

    state_dict names: ``mlp_t``, ``mlp_p`` (Linear(C, hidden), ReLU, Linear(hidden, d)),
    ``mlp_gate`` (Linear(C, hidden), ReLU, Linear(hidden, C)). hidden, d and the gate's sigmoid
    are unverified (no public code).

    Shapes: tokens T [B, L, C], part queries P [B, Np, C] (or [Np, C]); output [B, Np, C]
    (and the spatial attention [B, Np, L] with ``return_weights=True``, used by MatchDistill).
    """

    def __init__(self, dim=2048, attn_dim=256, hidden_dim=512, backend=None):
        super().__init__()
        self.mlp_t = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, attn_dim))
        self.mlp_p = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, attn_dim))
        self.mlp_gate = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim))
        self.attn_dim, self.backend = attn_dim, backend

    def forward(self, tokens, parts, key_padding_mask=None, return_weights=False):
        if tokens.dim() != 3:
            raise ValueError(f"tokens must be [B, L, C], got {tuple(tokens.shape)}")
        t_hat = self.mlp_t(_instance_norm(tokens)).unsqueeze(1)  # [B, 1, L, d]
        p_hat = self.mlp_p(_instance_norm(parts))
        p_hat = (p_hat if p_hat.dim() == 3 else p_hat.unsqueeze(0)).unsqueeze(1)  # [B or 1, 1, Np, d]
        # The fused op gives the spatial attention S(T, P); its values are the C-wide tokens.
        _, weights = template_attention(p_hat, t_hat, t_hat, key_padding_mask,
                                        scale=1.0 / math.sqrt(self.attn_dim), return_weights=True,
                                        backend=self.backend)
        weights = weights.squeeze(1)  # [B, Np, L]
        gate = torch.sigmoid(self.mlp_gate(parts))
        out = torch.matmul(weights, tokens) * gate
        return (out, weights) if return_weights else out

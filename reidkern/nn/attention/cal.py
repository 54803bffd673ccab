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

    ``top_k`` (optional) keeps that many tokens per part instead of ceil(alpha·HW/N_p).

    Returns ``(parts [B, N_p, C], scores S [B, HW, N_p], selected Ŝ [B, HW, N_p])``;
    :meth:`diversity_loss` gives CAL's L_div = Σ triu(ŜᵀŜ, 1).
    """

    def __init__(self, in_channels=2048, num_parts=6, alpha=0.5, pool_sizes=(1, 3, 5),
                 reduced_channels=256, backend=None, top_k=None):
        super().__init__()
        self.pool_sizes, self.num_parts, self.alpha, self.backend = tuple(pool_sizes), num_parts, alpha, backend
        self.top_k = top_k
        self.reduce = nn.ModuleList(nn.Conv2d(in_channels, reduced_channels, 1) for _ in pool_sizes)
        self.score = nn.Conv2d(len(pool_sizes) * reduced_channels, num_parts, 1)

    def pooled(self, x):
        """The scoring net's max-pooled maps of ``x`` [B, C, H, W], one per pool size (stride 1,
        same size)."""
        return [x if s == 1 else F.max_pool2d(x, s, stride=1, padding=s // 2) for s in self.pool_sizes]

    def part_logits(self, x):
        """Scoring-net logits [B, N_p, H, W] (before the softmax over parts).

        The reduce convs and the score conv are both linear with nothing between them, so
        ``score(cat_i reduce_i(pool_i x)) = Σ_i (W_s,i W_r,i) pool_i x + (b_s + Σ_i W_s,i b_r,i)``:
        one C→N_p product per pool size instead of C→reduced_channels and then
        n·reduced_channels→N_p (exact; about reduced_channels/N_p times fewer multiply-adds, and
        the reduced maps are never stored). Autograd through the folded weights gives every
        parameter its gradient."""
        r = self.reduce[0].out_channels
        w_score = self.score.weight.flatten(1)  # [N_p, n*r]
        bias = self.score.bias
        logits = None
        for i, (pooled, conv) in enumerate(zip(self.pooled(x), self.reduce)):
            w_i = w_score[:, i * r:(i + 1) * r]
            bias = bias + w_i @ conv.bias
            term = F.conv2d(pooled, (w_i @ conv.weight.flatten(1))[:, :, None, None])
            logits = term if logits is None else logits + term
        return logits + bias[:, None, None]

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"x must be a feature map [B, C, H, W], got {tuple(x.shape)}")
        scores = self.part_logits(x).flatten(2).transpose(1, 2).softmax(dim=-1)
        tokens = x.flatten(2).transpose(1, 2)  # [B, HW, C] (the op makes channels contiguous)
        k, alpha = (self.top_k, None) if self.top_k is not None else (None, self.alpha)
        parts, _, selected = topk_token_aggregate(scores, tokens, k=k, alpha=alpha, backend=self.backend)
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

    Shapes: tokens T [B, L, C], part queries P [B', Np, C] (or [Np, C]); output [B', Np, C]
    (and the spatial attention S(T, P) [B', Np, L] with ``return_weights=True``, used by
    MatchDistill). Without ``token_index`` B' = B (or P is broadcast); with ``token_index``
    (int64 [B'], values in [0, B)) query set b attends over token map ``token_index[b]`` — CAL's
    cross-modal refinement (a sample's parts over another sample's map) and self-refinement in
    one call, with each map's keys computed once however many query sets attend to it.

    How it is computed (exact): MLP₁'s last Linear is folded onto the queries,
    ``P̂ T̂ᵀ = (P̂ W₂) hᵀ + P̂ b₂`` with h the hidden token activations; the last term is constant
    over the tokens and drops out of the softmax. So the tokens go through one Linear + ReLU only,
    and the fused op (:func:`reidkern.ops.template_attention`) attends with the hidden width.

    Raises ValueError: tokens not [B, L, C]; token_index not int64 [B'] with values in [0, B).
    """

    def __init__(self, dim=2048, attn_dim=256, hidden_dim=512, backend=None):
        super().__init__()
        self.mlp_t = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, attn_dim))
        self.mlp_p = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, attn_dim))
        self.mlp_gate = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim))
        self.attn_dim, self.backend = attn_dim, backend

    def forward(self, tokens, parts, key_padding_mask=None, return_weights=False, token_index=None):
        if tokens.dim() != 3:
            raise ValueError(f"tokens must be [B, L, C], got {tuple(tokens.shape)}")
        # Hidden token activations h = ReLU(W₁ IN(T) + b₁), once per map.
        keys = F.relu(self.mlp_t[0](_instance_norm(tokens)))  # [B, L, hidden]
        if token_index is not None:
            if (not isinstance(token_index, torch.Tensor) or token_index.dtype != torch.int64
                    or token_index.dim() != 1):
                raise ValueError("token_index must be an int64 tensor [B'] of token-map indices")
            if token_index.numel() and (int(token_index.min()) < 0 or int(token_index.max()) >= tokens.shape[0]):
                raise ValueError(f"token_index values must be in [0, {tokens.shape[0]}), "
                                 f"got [{int(token_index.min())}, {int(token_index.max())}]")
            keys, tokens = keys.index_select(0, token_index), tokens.index_select(0, token_index)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.index_select(0, token_index)
        p_hat = self.mlp_p(_instance_norm(parts))
        p_hat = p_hat if p_hat.dim() == 3 else p_hat.unsqueeze(0)
        q = (p_hat @ self.mlp_t[2].weight).unsqueeze(1)  # [B or 1, 1, Np, hidden]: W₂ folded on P̂
        k = keys.unsqueeze(1)
        _, weights = template_attention(q, k, k, key_padding_mask, scale=1.0 / math.sqrt(self.attn_dim),
                                        return_weights=True, backend=self.backend)
        weights = weights.squeeze(1)  # [B, Np, L]
        gate = torch.sigmoid(self.mlp_gate(parts))
        out = torch.matmul(weights, tokens) * gate
        return (out, weights) if return_weights else out

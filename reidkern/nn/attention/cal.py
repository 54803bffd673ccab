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
        same size), in channels-last memory format: torch's CPU max-pool is several times faster
        on it for ReID maps (2048 channels over ~18x9), and it is the [B, HW, C] token layout the
        aggregation needs, so the one copy serves both."""
        x = x.contiguous(memory_format=torch.channels_last)
        return [x if s == 1 else F.max_pool2d(x, s, stride=1, padding=s // 2) for s in self.pool_sizes]

    def folded_weights(self):
        """``([W_1, …, W_n], b)``: the scoring net as one [N_p, C] weight per pool size and a
        bias [N_p]. The reduce convs and the score conv are both linear with nothing between them,
        so ``score(cat_i reduce_i(pool_i x)) = Σ_i (W_s,i W_r,i) pool_i x + (b_s + Σ_i W_s,i b_r,i)``:
        one C→N_p product per pool size instead of C→reduced_channels and then
        n·reduced_channels→N_p (exact; about reduced_channels/N_p times fewer multiply-adds, and
        the reduced maps are never stored). Autograd through the folded weights gives every
        parameter its gradient."""
        r = self.reduce[0].out_channels
        w_score = self.score.weight.flatten(1)  # [N_p, n*r]
        bias, weights = self.score.bias, []
        for i, conv in enumerate(self.reduce):
            w_i = w_score[:, i * r:(i + 1) * r]
            bias = bias + w_i @ conv.bias
            weights.append(w_i @ conv.weight.flatten(1))
        return weights, bias

    def part_logits(self, x):
        """Scoring-net logits [B, N_p, H, W] (before the softmax over parts); see folded_weights."""
        x = x.contiguous(memory_format=torch.channels_last)
        weights, bias = self.folded_weights()
        logits = bias
        for w, pooled in zip(weights, self.pooled(x)):
            logits = logits + torch.matmul(_token_major(pooled), w.t())  # [B, HW, N_p]
        return logits.transpose(1, 2).reshape(x.shape[0], logits.shape[-1], *x.shape[2:])

    def _aggregate(self, logits, x):
        """logits [B, HW, N_p], x channels-last [B, C, H, W] → (parts, scores, selected)."""
        scores = logits.softmax(dim=-1)  # [B, HW, N_p]
        k, alpha = (self.top_k, None) if self.top_k is not None else (None, self.alpha)
        parts, _, selected = topk_token_aggregate(scores, _token_major(x), k=k, alpha=alpha, backend=self.backend)
        return parts, scores, selected

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"x must be a feature map [B, C, H, W], got {tuple(x.shape)}")
        x = x.contiguous(memory_format=torch.channels_last)  # one copy for pools and tokens
        weights, bias = self.folded_weights()
        logits = bias
        for w, pooled in zip(weights, self.pooled(x)):
            logits = logits + torch.matmul(_token_major(pooled), w.t())
        return self._aggregate(logits, x)

    @staticmethod
    def forward_grouped(layers, x, group):
        """Several DRMs of one configuration over one batch: sample b goes through
        ``layers[group[b]]`` (CAL: one DRM per modality). The max-pools run once over the whole
        batch, each sample's folded scoring weights are picked by its group, and one fused top-k
        aggregation serves the batch — no per-group copies of x. x [B, C, H, W], group int64 [B]
        with values in [0, len(layers)) → as ``forward``. Raises ValueError for layers of
        different pool sizes, part counts or selection (alpha / top_k)."""
        first = layers[0]
        for m in layers:
            if (m.pool_sizes, m.num_parts, m.alpha, m.top_k) != (first.pool_sizes, first.num_parts, first.alpha,
                                                                 first.top_k):
                raise ValueError("layers must share pool_sizes, num_parts, alpha and top_k")
        if x.dim() != 4:
            raise ValueError(f"x must be a feature map [B, C, H, W], got {tuple(x.shape)}")
        x = x.contiguous(memory_format=torch.channels_last)  # one copy for pools and tokens
        folded = [m.folded_weights() for m in layers]
        bias = torch.stack([b for _, b in folded]).index_select(0, group)  # [B, N_p]
        logits = bias[:, None, :]
        for i, pooled in enumerate(first.pooled(x)):
            w = torch.stack([ws[i] for ws, _ in folded]).index_select(0, group)  # [B, N_p, C]
            logits = logits + torch.bmm(_token_major(pooled), w.transpose(1, 2))  # [B, HW, N_p]
        return first._aggregate(logits, x)

    @staticmethod
    def diversity_loss(selected):
        """CAL's L_div = Σ_{i<j} (ŜᵀŜ)_{ij}, averaged over the batch; selected Ŝ [B, HW, N_p]."""
        gram = selected.transpose(1, 2) @ selected
        return torch.triu(gram, diagonal=1).sum(dim=(1, 2)).mean()


def _token_major(x):
    """[B, C, H, W] channels-last → the [B, HW, C] view of the same memory (contiguous), so
    products against it take and give gradients in that layout without copies."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2] * x.shape[3], x.shape[1])


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
        p_hat = self.mlp_p(_instance_norm(parts))
        p_hat = p_hat if p_hat.dim() == 3 else p_hat.unsqueeze(0)
        q = p_hat @ self.mlp_t[2].weight  # [B' or 1, Np, hidden]: W₂ folded onto P̂
        gate = torch.sigmoid(self.mlp_gate(parts))
        scale = 1.0 / math.sqrt(self.attn_dim)
        if token_index is None:
            weights = template_attention(q.unsqueeze(1), keys.unsqueeze(1), keys.unsqueeze(1), key_padding_mask,
                                         scale=scale, return_weights=True, backend=self.backend).weights
            weights = weights.squeeze(1)  # [B, Np, L]
            out = torch.matmul(weights, tokens) * gate
            return (out, weights) if return_weights else out
        B = tokens.shape[0]
        if (not isinstance(token_index, torch.Tensor) or token_index.dtype != torch.int64
                or token_index.dim() != 1 or token_index.shape[0] != q.shape[0]):
            raise ValueError(f"token_index must be an int64 tensor [B'] = [{q.shape[0]}] of token-map indices")
        if token_index.numel() and (int(token_index.min()) < 0 or int(token_index.max()) >= B):
            raise ValueError(f"token_index values must be in [0, {B}), "
                             f"got [{int(token_index.min())}, {int(token_index.max())}]")
        counts = torch.bincount(token_index, minlength=B)
        c = int(counts[0]) if B else 0
        if key_padding_mask is None and bool((counts == c).all()) and c > 0:
            # Every map serves the same number c of query sets (CAL: its own and one partner's):
            # group the query sets by map and attend with [B, c·Np] queries over the maps as
            # they are — no copies of the tokens or keys.
            order = torch.argsort(token_index, stable=True)
            Np = q.shape[1]
            qg = q.index_select(0, order).reshape(B, 1, c * Np, -1)
            wg = template_attention(qg, keys.unsqueeze(1), keys.unsqueeze(1), None, scale=scale,
                                    return_weights=True, backend=self.backend).weights
            og = torch.matmul(wg.squeeze(1), tokens)  # [B, c·Np, C]
            inverse = torch.argsort(order)
            weights = wg.reshape(B * c, Np, -1).index_select(0, inverse)
            out = og.reshape(B * c, Np, -1).index_select(0, inverse) * gate
            return (out, weights) if return_weights else out
        keys, tokens = keys.index_select(0, token_index), tokens.index_select(0, token_index)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.index_select(0, token_index)
        weights = template_attention(q.unsqueeze(1), keys.unsqueeze(1), keys.unsqueeze(1), key_padding_mask,
                                     scale=scale, return_weights=True, backend=self.backend).weights
        weights = weights.squeeze(1)
        out = torch.matmul(weights, tokens) * gate
        return (out, weights) if return_weights else out

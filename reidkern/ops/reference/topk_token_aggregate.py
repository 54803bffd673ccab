"""Eager reference of topk_token_aggregate (CAL discriminative region mining): topk + scatter +
weighted sum, several launches, the way the field writes it. Fallback, test oracle, baseline."""
import torch


def topk_token_aggregate_reference(scores, tokens, k):
    """Per part, the score-weighted mean of its k highest-scoring tokens (CAL: P = Ŝᵀ T / Σ Ŝ).

    Args:
        scores: [B, L, Np] part scores per token (CAL: softmax over parts).
        tokens: [B, L, C] token features.
        k: tokens kept per part, 1 <= k <= L.

    Returns:
        ``(parts [B, Np, C], indices [B, Np, k] int64, selected [B, L, Np])``: indices by decreasing
        score (ties: lowest index first); selected = Ŝ, the scores where kept and 0 elsewhere. Where
        a part's kept scores sum to 0 the divisor is 1 (P = Σ Ŝ T).
    """
    B, L, Np = scores.shape
    s = scores.transpose(1, 2)  # [B, Np, L]
    # Stable sort on -score: ties keep the lower index first, as the kernels do.
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :k]  # [B, Np, k]
    keep = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, order, True)
    s_hat = torch.where(keep, s, torch.zeros_like(s))  # [B, Np, L]
    z = s_hat.sum(dim=-1, keepdim=True)
    z = torch.where(z != 0, z, torch.ones_like(z))
    parts = torch.matmul(s_hat, tokens) / z
    return parts, order, s_hat.transpose(1, 2)

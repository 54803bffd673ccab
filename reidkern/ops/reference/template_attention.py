"""Eager reference of template_attention: einsum-style matmul + softmax, as the papers' code does.

Materialises the [B, H, Nq, L] logits and weights. It is the fallback when no kernel is compiled,
the tests' oracle (in float64) and the benchmarks' baseline.
"""
import torch


def template_attention_reference(q, k, v, key_padding_mask=None, scale=None):
    """Scaled dot-product cross-attention of a few queries over keys/values.

    Args:
        q: [B or 1, H, Nq, D] queries (batch 1 broadcasts over B).
        k, v: [B, H, L, D] keys and values.
        key_padding_mask: optional [B, L] bool, True = padding (ignored key).
        scale: logit scale, default 1/sqrt(D).

    Returns:
        ``(out [B, H, Nq, D], weights [B, H, Nq, L], mean_logit [B, H, Nq])``. mean_logit is the
        mean of the scaled logits over the valid keys. Rows whose keys are all padding give zero
        output, zero weights and zero mean logit (with zero gradients).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, H, Nq, L]
    B, L = k.shape[0], k.shape[2]
    if key_padding_mask is None:
        weights = torch.softmax(logits, dim=-1)
        mean_logit = logits.sum(dim=-1) / max(L, 1)  # no keys (L = 0): 0, as a fully padded row
        return torch.matmul(weights, v), weights, mean_logit
    pad = key_padding_mask.to(torch.bool).view(B, 1, 1, L)
    valid_rows = (~pad).any(dim=-1, keepdim=True)  # [B, 1, 1, 1]
    masked = logits.masked_fill(pad, torch.finfo(logits.dtype).min)
    weights = torch.softmax(masked, dim=-1) * valid_rows  # fully padded rows -> 0
    weights = weights.masked_fill(pad, 0.0)
    n_valid = (~pad).sum(dim=-1).clamp(min=1)  # [B, 1, 1]
    mean_logit = logits.masked_fill(pad, 0.0).sum(dim=-1) / n_valid
    return torch.matmul(weights, v), weights, mean_logit

"""Eager references of the attention layers: the standard blocks as the papers' code writes them.

Each function runs a reidkern layer's own parameters through the textbook computation: the
queries (learned prototypes or templates) and a shared dictionary are expanded over the batch,
q/k/v are projected per sample, attention is ``matmul + softmax`` ("eager") or
``F.scaled_dot_product_attention`` ("sdpa"). They are the tests' float64 oracle for the layers and
the baselines of ``benchmarks/bench_attention_layers.py``.
"""
import torch
import torch.nn.functional as F

from reidkern.ops.reference.template_attention import template_attention_reference


def _attend(q, k, v, key_padding_mask, scale, attention):
    if attention == "eager":
        return template_attention_reference(q, k, v, key_padding_mask, scale)[0]
    if attention == "sdpa":
        attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    raise ValueError(f"attention must be 'eager' or 'sdpa', got {attention!r}")


def template_cross_attention_reference(module, query, context, key_padding_mask=None, attention="eager"):
    """:class:`reidkern.nn.TemplateCrossAttention` the standard way (projected k/v per sample).

    query [B, Nq, dim] or [Nq, dim]; context [B, L, context_dim] or [L, context_dim];
    key_padding_mask [B, L] bool (True = padding). Floating inputs in the module's dtype; returns
    [B, Nq, dim] in that dtype. With ``attention="sdpa"`` a fully padded row gives NaN, as SDPA
    does. Source: LGUR's official MHA block (pre-LN shared by query and context, bias-free q/k/v,
    residual, ReLU FFN). Raises ValueError for an ``attention`` other than "eager" or "sdpa".
    """
    m = module
    q_in = query if query.dim() == 3 else query.unsqueeze(0)
    c_in = context if context.dim() == 3 else context.unsqueeze(0)
    B = max(q_in.shape[0], c_in.shape[0])
    q_in, c_in = q_in.expand(B, -1, -1), c_in.expand(B, -1, -1)
    cnorm = m.norm if m.context_norm is None else m.context_norm
    c = cnorm(c_in)

    def heads(x):
        return x.view(B, x.shape[1], m.num_heads, m.head_dim).transpose(1, 2)

    scale = m.scale if m.scale is not None else m.head_dim ** -0.5
    out = _attend(heads(m.to_q(m.norm(q_in))), heads(m.to_k(c)), heads(m.to_v(c)), key_padding_mask,
                  scale, attention)
    out = out.transpose(1, 2).reshape(B, q_in.shape[1], m.num_heads * m.head_dim)
    x = q_in + m.dropout(m.to_out(out))
    if m.ffn is not None:
        x = x + m.dropout(m.ffn(m.ffn_norm(x)))
    return x


def dictionary_cross_attention_reference(module, tokens, foreground=False, context=None,
                                         context_padding_mask=None, attention="eager"):
    """:class:`reidkern.nn.DictionaryCrossAttention` (LGUR DGA) with the dictionary expanded over
    the batch. tokens [B, L, dim] → [B, L, dim]; dtypes, errors as
    :func:`template_cross_attention_reference`."""
    kv = module.dictionary if context is None else context
    out = template_cross_attention_reference(module.attn, tokens, kv, context_padding_mask, attention)
    if foreground:
        out = out * torch.sigmoid(module.mask_head(tokens))
    return out


def prototype_unification_reference(module, tokens, key_padding_mask=None, attention="eager"):
    """:class:`reidkern.nn.PrototypeUnification` (LGUR PGU) with the prototypes expanded over the
    batch. tokens [B, L, dim] → [B, K, out_dim]; dtypes, errors as
    :func:`template_cross_attention_reference`."""
    x = module.prototypes.unsqueeze(0).expand(tokens.shape[0], -1, -1)
    for layer in module.layers:
        x = template_cross_attention_reference(layer, x, tokens, key_padding_mask, attention)
    return torch.stack([proj(x[:, i]) for i, proj in enumerate(module.projections)], dim=1)


def top_k_token_aggregation_reference(module, x):
    """:class:`reidkern.nn.TopKTokenAggregation` (CAL DRM) from the standard blocks: max-pools,
    each reduced by its 1x1 conv, concatenated, the score conv, softmax over parts, then
    ``torch.topk`` per part, ``gather`` of the kept tokens for the weighted mean and ``scatter``
    of the kept scores into Ŝ. x [B, C, H, W] → ``(parts [B, N_p, C], S [B, HW, N_p],
    Ŝ [B, HW, N_p])`` in x's dtype. Ties in the scores may pick other tokens than the fused op
    (which keeps the lowest index); random real inputs have none. Source: CAL's DRM."""
    from reidkern.ops.topk_token_aggregate import resolve_k

    m = module
    feats = [conv(x if s == 1 else F.max_pool2d(x, s, stride=1, padding=s // 2))
             for s, conv in zip(m.pool_sizes, m.reduce)]
    scores = m.score(torch.cat(feats, dim=1)).flatten(2).transpose(1, 2).softmax(dim=-1)  # [B, L, Np]
    tokens = x.flatten(2).transpose(1, 2)  # [B, L, C]
    B, L, Np = scores.shape
    k = m.top_k if m.top_k is not None else resolve_k(L, Np, alpha=m.alpha)
    values, index = scores.topk(k, dim=1)  # [B, k, Np]
    kept = tokens.gather(1, index.transpose(1, 2).reshape(B, Np * k, 1).expand(-1, -1, tokens.shape[2]))
    kept = kept.view(B, Np, k, -1)  # [B, Np, k, C]
    vals = values.transpose(1, 2)  # [B, Np, k]
    z = vals.sum(-1, keepdim=True)
    parts = (vals.unsqueeze(-1) * kept).sum(2) / torch.where(z != 0, z, torch.ones_like(z))
    selected = torch.zeros_like(scores).scatter(1, index, values)
    return parts, scores, selected


def target_aware_attention_reference(module, tokens, parts, key_padding_mask=None, return_weights=False):
    """:class:`reidkern.nn.TargetAwareAttention` (CAL TSAA) written out as the paper's equations:
    ``T̂ = MLP₁(IN(T))``, ``P̂ = MLP₂(IN(P))``, ``softmax(P̂ T̂ᵀ / √d)`` by matmul + softmax,
    ``(S T) ⊗ sigmoid(MLP₃(P))``. IN = per token/query mean and (biased) variance over channels,
    eps 1e-5. tokens [B, L, C], parts [B, Np, C] or [Np, C], key_padding_mask [B, L] bool →
    [B, Np, C] (and S [B, Np, L] with ``return_weights``), in the inputs' dtype."""
    def inorm(v):
        mu = v.mean(-1, keepdim=True)
        return (v - mu) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-5)

    m = module
    t_hat = m.mlp_t(inorm(tokens))  # [B, L, d]
    p_hat = m.mlp_p(inorm(parts))
    logits = torch.matmul(p_hat, t_hat.transpose(-1, -2)) / (m.attn_dim ** 0.5)  # [B, Np, L]
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, :], float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    if key_padding_mask is not None:
        weights = torch.nan_to_num(weights, nan=0.0)  # fully padded rows: zeros, as the fused op
    out = torch.matmul(weights, tokens) * torch.sigmoid(m.mlp_gate(parts))
    return (out, weights) if return_weights else out

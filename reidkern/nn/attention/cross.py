"""Multi-head cross-attention block of a few queries over tokens (LGUR's "MHA", DPTI's part
attention), on the fused ``template_attention`` op."""
from torch import nn

from reidkern.ops.template_attention import template_attention


class TemplateCrossAttention(nn.Module):
    """Pre-LN multi-head cross-attention with a residual on the query, then a ReLU FFN.

    ``x = query + to_out(MHA(norm(query), norm(context)))``; with ``ffn_dim``:
    ``x = x + ffn(ffn_norm(x))``. As in LGUR's official code, one LayerNorm (``norm``) is applied
    to both the query and the key/value tokens (``shared_norm=True``; otherwise the context gets
    its own ``context_norm``), and q/k/v have no bias by default.

    state_dict names: ``norm`` (LayerNorm(dim)), ``context_norm`` (only when not shared),
    ``to_q`` (Linear(dim, heads*head_dim)), ``to_k``/``to_v`` (Linear(context_dim,
    heads*head_dim)), ``to_out`` (Linear(heads*head_dim, dim)), ``ffn_norm``, ``ffn.0``/``ffn.2``
    (Linear(dim, ffn_dim), ReLU, Linear(ffn_dim, dim)).

    Args:
        dim: query (and output) channels. context_dim: key/value token channels (default dim;
            must equal dim with a shared norm).
        num_heads, head_dim: attention heads and their width (default dim // num_heads); the inner
            width heads*head_dim may exceed dim (LGUR PGU: 6 x 512).
        qkv_bias: bias on to_q/to_k/to_v. ffn_dim: hidden width of the FFN (None: no FFN).
        scale: logit scale (default 1/sqrt(head_dim)). dropout: on the attention output and FFN.
        backend: reidkern backend for the attention op (None: default choice).

    Shapes:
        query [B, Nq, dim] or [Nq, dim] (learned queries, broadcast over the batch without a copy);
        context [B, L, context_dim] or [L, context_dim] (e.g. a dictionary shared by the batch);
        key_padding_mask [B, L] bool, True = padding. Output [B, Nq, dim] (and the weights
        [B, heads, Nq, L] with ``return_weights=True``).
    """

    def __init__(self, dim, num_heads=8, head_dim=None, context_dim=None, qkv_bias=False,
                 ffn_dim=None, shared_norm=True, scale=None, dropout=0.0, backend=None):
        super().__init__()
        context_dim = dim if context_dim is None else context_dim
        head_dim = dim // num_heads if head_dim is None else head_dim
        if shared_norm and context_dim != dim:
            raise ValueError(f"shared_norm needs context_dim == dim, got {context_dim} and {dim}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.scale, self.backend = scale, backend
        inner = num_heads * head_dim
        self.norm = nn.LayerNorm(dim)
        self.context_norm = None if shared_norm else nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)
        if ffn_dim:
            self.ffn_norm = nn.LayerNorm(dim)
            self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True),
                                     nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        else:
            self.ffn_norm = self.ffn = None

    def _heads(self, x):  # [N, L, inner] -> [N, H, L, hd] view (unit stride on hd)
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query, context, key_padding_mask=None, return_weights=False):
        if query.dim() not in (2, 3):
            raise ValueError(f"query must be [B, Nq, dim] or [Nq, dim], got {tuple(query.shape)}")
        if context.dim() not in (2, 3):
            raise ValueError(f"context must be [B, L, dim] or [L, dim], got {tuple(context.shape)}")
        q_in = query if query.dim() == 3 else query.unsqueeze(0)
        c_in = context if context.dim() == 3 else context.unsqueeze(0)
        B = max(q_in.shape[0], c_in.shape[0])
        if q_in.shape[0] not in (1, B) or c_in.shape[0] not in (1, B):
            raise ValueError(f"query batch {q_in.shape[0]} and context batch {c_in.shape[0]} do not match")
        cnorm = self.norm if self.context_norm is None else self.context_norm
        q = self._heads(self.to_q(self.norm(q_in)))
        c = cnorm(c_in)
        k, v = self._heads(self.to_k(c)), self._heads(self.to_v(c))
        if k.shape[0] != B:  # a context shared by the batch (dictionary): broadcast, no copy
            k, v = k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)
        res = template_attention(q, k, v, key_padding_mask, scale=self.scale,
                                 return_weights=return_weights, backend=self.backend)
        out, weights = (res if return_weights else (res, None))
        out = out.transpose(1, 2).reshape(B, q.shape[2], self.num_heads * self.head_dim)
        x = q_in + self.dropout(self.to_out(out))
        if self.ffn is not None:
            x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return (x, weights) if return_weights else x

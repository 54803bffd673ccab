"""Multi-head cross-attention block of a few queries over tokens (LGUR's "MHA", DPTI's part
attention), on the fused ``template_attention`` op."""
import torch
from torch import nn

from reidkern._amp import autocast_enabled
from reidkern.ops import _validate as V
from reidkern.ops.template_attention import template_attention

from .folded_norm import folded_part_attention


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
        fold_projections: move the key/value projections onto the queries (exact algebra, see
            ``_attend_folded``): the keys and values [B, heads, L, head_dim] are then never built,
            which for a few queries over many tokens (LGUR PGU, DPTI part templates) saves most
            of the layer's multiply-adds and memory. None (default) decides per call by counting
            multiply-adds; True/False force it.

    Shapes:
        query [B, Nq, dim] or [Nq, dim] (learned queries, broadcast over the batch without a copy);
        context [B, L, context_dim] or [L, context_dim] (e.g. a dictionary shared by the batch);
        key_padding_mask [B, L] bool, True = padding. Output [B, Nq, dim] (and the weights
        [B, heads, Nq, L] with ``return_weights=True``).
    """

    def __init__(self, dim, num_heads=8, head_dim=None, context_dim=None, qkv_bias=False,
                 ffn_dim=None, shared_norm=True, scale=None, dropout=0.0, backend=None,
                 fold_projections=None):
        super().__init__()
        self.fold_projections = fold_projections
        dim = V.check_int(dim, "dim", minimum=1)
        num_heads = V.check_int(num_heads, "num_heads", minimum=1)
        context_dim = dim if context_dim is None else V.check_int(context_dim, "context_dim", minimum=1)
        if head_dim is None:
            head_dim = dim // num_heads
            if head_dim == 0:
                raise ValueError(f"head_dim = dim // num_heads = {dim} // {num_heads} = 0: give "
                                 "head_dim, or num_heads <= dim")
        head_dim = V.check_int(head_dim, "head_dim", minimum=1)
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

    def _fold(self, Bq, Bc, B, Nq, L, device):
        """Whether to fold the k/v projections into the queries (see _attend_folded): chosen when
        it needs fewer multiply-adds, i.e. for a few queries over per-sample tokens."""
        if self.fold_projections is not None:
            return self.fold_projections
        c, inner, H = self.to_k.in_features, self.num_heads * self.head_dim, self.num_heads
        if device.type == "cuda" and c > 512:  # the CUDA kernel's head-dim limit
            return False
        projected = 2 * Bc * L * c * inner + 2 * B * H * Nq * L * self.head_dim
        folded = Bq * Nq * inner * c + 2 * B * H * Nq * L * c + B * Nq * c * inner
        return folded < projected

    def _attend_folded(self, q, c, B, key_padding_mask, return_weights):
        """Attention with the key/value projections moved off the L tokens onto the Nq queries.

        ``q_h · (W_k,h x_j + b_k,h) = (W_k,hᵀ q_h) · x_j + const`` (the constant cancels in the
        softmax) and ``Σ_j p_j (W_v,h x_j + b_v,h) = W_v,h (Σ_j p_j x_j) + b_v,h``: every head
        attends over the normalised tokens x themselves, so the [B, H, L, head_dim] keys and
        values are never computed or stored. Exact up to float rounding order.
        """
        H, hd = self.num_heads, self.head_dim
        Bq, Nq, cdim = q.shape[0], q.shape[1], c.shape[-1]
        w_k = self.to_k.weight.view(H, hd, cdim)
        w_v = self.to_v.weight.view(H, hd, cdim)
        # einsum, not a broadcasting matmul: it runs one GEMM per head over the (batch, query)
        # rows instead of copying the weights B times
        qf = torch.einsum("bnhd,hdc->bhnc", q.view(Bq, Nq, H, hd), w_k)  # [Bq, H, Nq, c]
        scale = self.scale if self.scale is not None else hd ** -0.5
        x = c.unsqueeze(1)  # [Bc, 1, L, c]: one "head" whose H*Nq queries are the heads' queries
        u, weights, _ = template_attention(qf.reshape(Bq, 1, H * Nq, cdim), x, x, key_padding_mask,
                                           scale=scale, return_weights=return_weights,
                                           backend=self.backend)
        out = torch.einsum("bhnc,hdc->bhnd", u.reshape(B, H, Nq, cdim), w_v)  # [B, H, Nq, hd]
        if self.to_v.bias is not None:
            b_v = self.to_v.bias.view(1, H, 1, hd)
            if key_padding_mask is not None:  # a fully padded row stays zero, as unfolded
                b_v = b_v * (~key_padding_mask).any(-1).to(out.dtype).view(B, 1, 1, 1)
            out = out + b_v
        if weights is not None:
            weights = weights.reshape(B, H, Nq, weights.shape[-1])
        return out, weights

    def _attend_folded_norm(self, q, x, norm, return_weights):
        """The folded attention (``_attend_folded``) with the context's LayerNorm folded in too, run
        a few samples at a time over the raw tokens x [B, L, c] (``folded_norm.py``); for
        per-sample queries and tokens without padding (DPTI's part attention over the final ResNet
        map).

        With ``n_j = (x_j − μ_j) / σ_j`` and ``LN(x_j) = w ⊙ n_j + b``, a folded query f (row of
        W_kᵀq) has ``f · LN(x_j) = ((f ⊙ w) · x_j − μ_j Σ(f ⊙ w)) / σ_j + f · b``, the last term the
        same for every key (it cancels in the softmax); and
        ``Σ_j p_j LN(x_j) = w ⊙ (Σ_j (p_j / σ_j) x_j − Σ_j p_j μ_j / σ_j) + b``. So neither the
        normalised [B, L, c] tokens nor a contiguous copy of a transposed map is built: the GEMMs
        read x in the layout it has (``final.flatten(2).transpose(1, 2)`` is a view), and only
        the per-token statistics μ, σ [B, L] are new. Exact up to float rounding order.
        """
        H, hd = self.num_heads, self.head_dim
        B, Nq, cdim = q.shape[0], q.shape[1], x.shape[-1]
        w_k = self.to_k.weight.view(H, hd, cdim)
        w_v = self.to_v.weight.view(H, hd, cdim)
        if norm.weight is not None:  # the norm's weight on the [H, hd, c] weights, not on [B, ...]
            w_k, w_v = w_k * norm.weight, w_v * norm.weight
        scale = self.scale if self.scale is not None else hd ** -0.5
        out, p = folded_part_attention(q.view(B, Nq, H, hd), w_k, w_v, x, norm.eps, scale)
        if norm.bias is not None:  # W_v b: Σ_j p_j = 1
            out = out + (self.to_v.weight @ norm.bias).view(H, hd)
        if self.to_v.bias is not None:
            out = out + self.to_v.bias.view(H, hd)
        out = out.transpose(1, 2)  # [B, H, Nq, hd] view, as the other paths give
        weights = p.view(B, Nq, H, x.shape[1]).transpose(1, 2) if return_weights else None
        return out, weights

    def _heads(self, x):  # [N, L, inner] -> [N, H, L, hd] view (unit stride on hd)
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query, context, key_padding_mask=None, return_weights=False):
        if query.dim() not in (2, 3):
            raise ValueError(f"query must be [B, Nq, dim] or [Nq, dim], got {tuple(query.shape)}")
        if context.dim() not in (2, 3):
            raise ValueError(f"context must be [B, L, dim] or [L, dim], got {tuple(context.shape)}")
        q_in = query if query.dim() == 3 else query.unsqueeze(0)
        c_in = context if context.dim() == 3 else context.unsqueeze(0)
        # the batch: the first of query, context and mask rows that is not 1 (1 broadcasts; 0 is
        # an empty batch)
        sizes = [q_in.shape[0], c_in.shape[0]]
        if isinstance(key_padding_mask, torch.Tensor) and key_padding_mask.dim() == 2:
            sizes.append(key_padding_mask.shape[0])
        B = next((n for n in sizes if n != 1), 1)
        if any(n not in (1, B) for n in sizes):
            raise ValueError(f"query batch {q_in.shape[0]}, context batch {c_in.shape[0]}"
                             + (f" and key_padding_mask rows {sizes[2]}" if len(sizes) > 2 else "")
                             + " do not match (each must be B or 1)")
        cnorm = self.norm if self.context_norm is None else self.context_norm
        q = self.to_q(self.norm(q_in))  # [Bq, Nq, inner]
        fold = self._fold(q_in.shape[0], c_in.shape[0], B, q_in.shape[1], c_in.shape[1], c_in.device)
        if (fold and c_in.device.type == "cpu" and key_padding_mask is None
                and q_in.shape[0] == c_in.shape[0] == B and c_in.shape[1] > 0
                and self.backend != "reference" and not torch.compiler.is_compiling()
                and not autocast_enabled("cpu")):
            # per-sample queries and tokens (DPTI's part attention): batched GEMMs with the norm
            # folded in (the fused op runs one small GEMM per (sample, head) on the CPU). Compiled
            # graphs and autocast take the generic folded path: the hand-written function's GEMMs
            # write into strided outputs, which graphs do not take and autocast does not cast.
            out, weights = self._attend_folded_norm(q, c_in, cnorm, return_weights)
        elif fold:
            out, weights = self._attend_folded(q, cnorm(c_in), B, key_padding_mask, return_weights)
        else:
            c = cnorm(c_in)
            # a context shared by the batch (dictionary) stays batch 1: the op broadcasts it
            k, v = self._heads(self.to_k(c)), self._heads(self.to_v(c))
            out, weights, _ = template_attention(self._heads(q), k, v, key_padding_mask,
                                                 scale=self.scale, return_weights=return_weights,
                                                 backend=self.backend)
        out = out.transpose(1, 2).reshape(B, q.shape[1], self.num_heads * self.head_dim)
        if q_in.shape[0] != B:  # learned queries broadcast over the batch (B from context or mask)
            q_in = q_in.expand(B, -1, -1)
        x = q_in + self.dropout(self.to_out(out))
        if self.ffn is not None:
            x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return (x, weights) if return_weights else x

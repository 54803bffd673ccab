"""Multi-head attention of a few queries over LayerNorm-ed tokens with the key/value projections
and the norm folded onto the queries, run a few samples at a time (the CPU path of
:class:`reidkern.nn.TemplateCrossAttention` for per-sample queries and tokens, e.g. DPTI's part
attention over the final ResNet map).

Head h's logits ``q_h · W_k,h LN(x_j)`` and output ``W_v,h Σ_j p_j LN(x_j)`` only need the tokens
through ``g = W_k,hᵀ q_h`` and ``U = Σ_j p_j n_j``. With ``n_j = (x_j − μ_j) σ_j⁻¹`` (the LayerNorm
before its affine part, whose weight is already in W_k and W_v):

    S_ij = scale · (g_i · x_j − μ_j Σ_c g_ic) / σ_j        (= scale · g_i · n_j)
    P = softmax_j(S),   U_i = Σ_j (P_ij / σ_j) x_j − Σ_j (P_ij / σ_j) μ_j,   out_i = W_v,h U_i

so neither the keys and values nor the normalised tokens are built. The rows i are the (query,
head) pairs, so that each head's rows of g and U [B, Nq·H, C] are a strided matrix and the
per-head projections are GEMMs over the whole batch that read and write in place. The middle
(statistics, logits, softmax, U; in the backward the gradients of g and x) runs per sample: in
the compiled CPU kernel (csrc/cpu/folded_attention.cpp, one task per sample, elementwise steps
fused) when the library is built, else below a few samples at a time, so that the [rows, L]-sized
work stays in cache. The gradient of x comes back in x's own layout (for DPTI the [B, C, L]
memory of the ResNet map). The backward is written by hand.
"""
import torch
from torch.autograd.function import once_differentiable

from reidkern._library import native_available


def _map_layout(x):
    """Whether x [B, L, C] is a transposed [B, C, L] map (its tokens contiguous), whose gradient is
    then given in that layout too (the compiled kernel's rule as well)."""
    return x.stride(1) == 1 and x.shape[1] > 1


if native_available():
    @torch.library.register_fake("reidkern::folded_attention_fwd")
    def _(g, x, eps, scale):
        B, M, C = g.shape
        L = x.shape[1]
        return (g.new_empty(B, M, C), g.new_empty(B, M, L), g.new_empty(B, M, L),
                g.new_empty(B, L), g.new_empty(B, L))

    @torch.library.register_fake("reidkern::folded_attention_bwd")
    def _(grad_u, grad_p, g, x, p, tc, mu, rstd, scale):
        B, L, C = x.shape
        if _map_layout(x):
            return g.new_empty(g.shape), g.new_empty(B, C, L).transpose(1, 2)
        return g.new_empty(g.shape), g.new_empty(B, L, C)

# samples per chunk: about this many bytes of one chunk's [rows, C] slice
_CHUNK_BYTES = 1 << 21


def _per_head(a, w, out):
    """``out[:, h] = a[:, h] @ w[h]`` for a [R, H, K] (any strides), w [H, K, N], out [R, H, N]:
    head h's rows are a strided matrix, so each GEMM reads and writes in place."""
    for h in range(w.shape[0]):
        torch.mm(a[:, h], w[h], out=out[:, h])
    return out


def _per_head_weight_grad(a, grad, out):
    """``out[h] = a[:, h]ᵀ @ grad[:, h]``: the gradient of w in ``_per_head(a, w)`` given the
    output's gradient (a [R, H, K], grad [R, H, N], out [H, K, N])."""
    for h in range(out.shape[0]):
        torch.mm(a[:, h].t(), grad[:, h], out=out[h])
    return out


def _token_stats(x, eps):
    """μ and 1/σ [B, L] of the tokens x [B, L, C] over C (LayerNorm's biased variance)."""
    mu = x.mean(dim=-1)
    var = torch.empty_like(mu)
    for b in range(x.shape[0]):  # one sample's centred squares stay in cache
        d = x[b] - mu[b].unsqueeze(-1)
        torch.mean(d.mul_(d), dim=-1, out=var[b])
    return mu, torch.rsqrt(var + eps)


def _chunks(B, rows, C, itemsize):
    step = max(1, _CHUNK_BYTES // max(1, rows * C * itemsize))
    return [(b0, min(B, b0 + step)) for b0 in range(0, B, step)]


def _forward_chunks(g_all, x, eps, scale):
    """The forward's middle a few samples at a time (no compiled library): U, P, σ·S, μ, 1/σ and
    Σ_c g."""
    B, M, C = g_all.shape
    L = x.shape[1]
    u_all = g_all.new_empty(B, M, C)
    p_all, tc_all = g_all.new_empty(B, M, L), g_all.new_empty(B, M, L)
    mu_all, rstd_all = g_all.new_empty(B, L), g_all.new_empty(B, L)
    gs_all = g_all.sum(-1, keepdim=True)  # [B, M, 1]: Σ_c g_ic, the mean term's weight
    for b0, b1 in _chunks(B, M, C, x.element_size()):
        xc, g, gs = x[b0:b1], g_all[b0:b1], gs_all[b0:b1]
        mu, rstd = _token_stats(xc, eps)
        tc = torch.baddbmm(gs * mu.unsqueeze(1), g, xc.transpose(1, 2), beta=-1).mul_(scale)  # σ·S
        p = torch.softmax(tc * rstd.unsqueeze(1), dim=-1)
        r = p * rstd.unsqueeze(1)
        u = torch.bmm(r, xc, out=u_all[b0:b1])
        u.sub_((r * mu.unsqueeze(1)).sum(-1, keepdim=True))  # [Bc, M, C]
        mu_all[b0:b1], rstd_all[b0:b1], tc_all[b0:b1], p_all[b0:b1] = mu, rstd, tc, p
    return u_all, p_all, tc_all, mu_all, rstd_all, gs_all


def _backward_chunks(grad_u_all, grad_p, g_all, gs_all, x, p_all, tc_all, mu_all, rstd_all, scale):
    """The backward's middle a few samples at a time (no compiled library): the gradients of g and
    of x (in x's layout)."""
    B, M, C = g_all.shape
    L = x.shape[1]
    grad_g_all = g_all.new_empty(B, M, C)
    bcl = _map_layout(x)  # x is a transposed [B, C, L] map: answer in kind
    gx_all = x.new_empty(B, C, L) if bcl else x.new_empty(B, L, C)
    for b0, b1 in _chunks(B, M, C, x.element_size()):
        xc, g, gs, grad_u = x[b0:b1], g_all[b0:b1], gs_all[b0:b1], grad_u_all[b0:b1]
        mu1, rstd1 = mu_all[b0:b1].unsqueeze(1), rstd_all[b0:b1].unsqueeze(1)  # [Bc, 1, L]
        tc, p = tc_all[b0:b1], p_all[b0:b1]
        du_sum = grad_u.sum(-1, keepdim=True)  # [Bc, M, 1]
        d_r = torch.bmm(grad_u, xc.transpose(1, 2)).sub_(du_sum * mu1)  # [Bc, M, L]
        d_p = d_r * rstd1
        if grad_p is not None:
            d_p = d_p + grad_p[b0:b1]
        d_s = p * (d_p - (p * d_p).sum(-1, keepdim=True))
        d_t = d_s * rstd1 * scale  # gradient of g_i · x_j
        r = p * rstd1
        grad_g = torch.bmm(d_t, xc, out=grad_g_all[b0:b1])
        grad_g.sub_((d_t * mu1).sum(-1, keepdim=True))  # [Bc, M, C]
        # μ and σ: S and U depend on them; dσ⁻¹/dx_jc = −σ_j⁻³ (x_jc − μ_j) / C
        d_mu = -(d_t * gs).sum(1) - (r * du_sum).sum(1)  # [Bc, L]
        d_rstd = (d_s * tc).sum(1) + (d_r * p).sum(1)
        bb = -d_rstd * rstd1.squeeze(1).pow(3) / C
        aa = d_mu / C - bb * mu1.squeeze(1)
        gx = gx_all[b0:b1]
        if bcl:  # [Bc, C, L]
            torch.bmm(g.transpose(1, 2), d_t, out=gx)
            gx.baddbmm_(grad_u.transpose(1, 2), r)
            gx.addcmul_(xc.transpose(1, 2), bb.unsqueeze(1)).add_(aa.unsqueeze(1))
        else:  # [Bc, L, C]
            torch.bmm(d_t.transpose(1, 2), g, out=gx)
            gx.baddbmm_(r.transpose(1, 2), grad_u)
            gx.addcmul_(xc, bb.unsqueeze(-1)).add_(aa.unsqueeze(-1))
    return grad_g_all, gx_all.transpose(1, 2) if bcl else gx_all


class _FoldedPartAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, w_k, w_v, x, eps, scale, native):
        B, Nq, H, hd = q.shape
        C = x.shape[2]
        M = Nq * H
        qr = q.reshape(B * Nq, H, hd)
        # the per-head projections over the whole batch: their GEMMs have only hd-deep products,
        # and run far faster with all B·Nq rows at once than chunk by chunk
        g_all = _per_head(qr, w_k, q.new_empty(B * Nq, H, C)).view(B, M, C)
        if native:
            u_all, p_all, tc_all, mu_all, rstd_all = torch.ops.reidkern.folded_attention_fwd(g_all, x, eps, scale)
            gs_all = None
        else:
            u_all, p_all, tc_all, mu_all, rstd_all, gs_all = _forward_chunks(g_all, x, eps, scale)
        out = _per_head(u_all.view(B * Nq, H, C), w_v.transpose(1, 2), q.new_empty(B * Nq, H, hd))
        ctx.save_for_backward(q, w_k, w_v, x, g_all, gs_all, u_all, mu_all, rstd_all, tc_all, p_all)
        ctx.scale, ctx.native = scale, native
        return out.view(B, Nq, H, hd), p_all

    @staticmethod
    @once_differentiable  # μ, σ and P are saved as constants: no double backward
    def backward(ctx, grad_out, grad_p):
        q, w_k, w_v, x, g_all, gs_all, u_all, mu_all, rstd_all, tc_all, p_all = ctx.saved_tensors
        B, Nq, H, hd = q.shape
        C = x.shape[2]
        M = Nq * H
        if grad_out is None:
            grad_out = q.new_zeros(q.shape)
        go = grad_out.reshape(B * Nq, H, hd)
        grad_wv = _per_head_weight_grad(go, u_all.view(B * Nq, H, C), torch.empty_like(w_v))  # out = W_v U
        grad_u_all = _per_head(go, w_v, q.new_empty(B * Nq, H, C)).view(B, M, C)
        if ctx.native:
            grad_g_all, gx = torch.ops.reidkern.folded_attention_bwd(
                grad_u_all, None if grad_p is None else grad_p.contiguous(), g_all, x, p_all, tc_all,
                mu_all, rstd_all, ctx.scale)
        else:
            grad_g_all, gx = _backward_chunks(grad_u_all, grad_p, g_all, gs_all, x, p_all, tc_all,
                                              mu_all, rstd_all, ctx.scale)
        gh = grad_g_all.view(B * Nq, H, C)
        grad_q = _per_head(gh, w_k.transpose(1, 2), q.new_empty(B * Nq, H, hd)).view(B, Nq, H, hd)
        grad_wk = _per_head_weight_grad(q.reshape(B * Nq, H, hd), gh, torch.empty_like(w_k))  # g = W_kᵀ q
        return grad_q, grad_wk, grad_wv, gx, None, None, None


def folded_part_attention(q, w_k, w_v, x, eps, scale, native=None):
    """Multi-head attention of per-sample queries over LayerNorm-ed tokens, projections folded.

    Args:
        q: [B, Nq, H, hd] projected queries (any strides).
        w_k, w_v: [H, hd, C] key and value projection weights, the norm's weight already applied
            (``W.view(H, hd, C) * norm.weight``); biases are the caller's (they add constants).
        x: [B, L, C] raw tokens (L >= 1; any strides: a transposed [B, C, L] map is read in place).
        eps: the LayerNorm's eps (the norm has no affine part here). scale: logit scale.
        native: run the per-sample middle in the compiled CPU kernel (True), in PyTorch a few
            samples at a time (False), or the kernel whenever it is built and x is a float32 or
            float64 CPU tensor (None, the default).

    Returns ``(out, p)``: out [B, Nq, H, hd] = ``W_v,h Σ_j p_j n_j`` per head, p [B, Nq·H, L] the
    attention weights (rows in (query, head) order). Floating inputs of one dtype and device
    (unchecked: an internal helper of TemplateCrossAttention). Differentiable once in q, w_k, w_v
    and x (both outputs).
    """
    if native is None:
        native = native_available() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
    return _FoldedPartAttention.apply(q, w_k, w_v, x, float(eps), float(scale), bool(native))

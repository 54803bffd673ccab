"""Attention of a few folded queries over LayerNorm-ed tokens, with the norm folded in: batched
GEMMs over the raw tokens and a hand-written backward (the CPU path of
:class:`reidkern.nn.TemplateCrossAttention` for per-sample queries and tokens, e.g. DPTI's part
attention over the final ResNet map).

With ``n_j = (x_j − μ_j) σ_j⁻¹`` (the LayerNorm before its affine part) and queries g (the
``W_kᵀ q`` of the folded attention, already multiplied by the norm's weight):

    S_ij = scale · (g_i · x_j − μ_j Σ_c g_ic) / σ_j        (= scale · g_i · n_j)
    P = softmax_j(S),   U_i = Σ_j P_ij n_j = Σ_j (P_ij / σ_j) x_j − Σ_j (P_ij / σ_j) μ_j

so neither the normalised tokens nor a contiguous copy of a transposed map is built: the two
forward GEMMs and the four backward ones read x in the layout it has, and only μ, σ [B, L] are
new. The backward returns the gradient of x in x's own layout (for DPTI the [B, C, L] memory of
the ResNet map), with the statistics' terms added in one pass.
"""
import torch
from torch.autograd.function import once_differentiable


def _token_stats(x, eps):
    """μ and 1/σ [B, L] of the tokens x [B, L, C] over C (LayerNorm's biased variance)."""
    if torch.compiler.is_compiling() or x.shape[0] == 0:
        var, mu = torch.var_mean(x, dim=-1, unbiased=False)
        return mu, torch.rsqrt(var + eps)
    # per sample: the centred squares of one sample stay in cache, where var_mean over the
    # whole batch read a transposed map at a fraction of the memory bandwidth
    mu = x.mean(dim=-1)
    var = torch.empty_like(mu)
    for b in range(x.shape[0]):
        d = x[b] - mu[b].unsqueeze(-1)
        torch.mean(d.mul_(d), dim=-1, out=var[b])
    return mu, torch.rsqrt(var + eps)


class _FoldedNormAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, x, eps, scale):
        mu, rstd = _token_stats(x, eps)  # [B, L]
        gs = g.sum(-1, keepdim=True)  # [B, M, 1]
        tc = torch.baddbmm(gs * mu.unsqueeze(1), g, x.transpose(1, 2), beta=-1) * scale  # σ·S
        p = torch.softmax(tc * rstd.unsqueeze(1), dim=-1)  # [B, M, L]
        r = p * rstd.unsqueeze(1)
        u = torch.bmm(r, x).sub_((r * mu.unsqueeze(1)).sum(-1, keepdim=True))  # [B, M, C]
        ctx.save_for_backward(g, gs, x, mu, rstd, tc, p)
        ctx.scale = scale
        return u, p

    @staticmethod
    @once_differentiable  # μ, σ and P are saved as constants: no double backward
    def backward(ctx, grad_u, grad_p):
        g, gs, x, mu, rstd, tc, p = ctx.saved_tensors
        C = x.shape[-1]
        mu1, rstd1 = mu.unsqueeze(1), rstd.unsqueeze(1)  # [B, 1, L]
        if grad_u is None:
            grad_u = torch.zeros(p.shape[0], p.shape[1], C, dtype=p.dtype, device=p.device)
        du_sum = grad_u.sum(-1, keepdim=True)  # [B, M, 1]
        d_r = torch.bmm(grad_u, x.transpose(1, 2)) - du_sum * mu1  # [B, M, L]
        d_p = d_r * rstd1
        if grad_p is not None:
            d_p = d_p + grad_p
        d_s = p * (d_p - (p * d_p).sum(-1, keepdim=True))
        d_t = d_s * rstd1 * ctx.scale  # gradient of g_i · x_j
        r = p * rstd1
        # the rank-one mean terms subtracted in place: as baddbmm's broadcast input they cost a
        # copy of the whole [B, M, C] result before the GEMM
        grad_g = torch.bmm(d_t, x).sub_((d_t * mu1).sum(-1, keepdim=True))
        # μ and σ: S and U depend on them; dσ⁻¹/dx_jc = −σ_j⁻³ (x_jc − μ_j) / C
        d_mu = -(d_t * gs).sum(1) - (r * du_sum).sum(1)  # [B, L]
        d_rstd = (d_s * tc).sum(1) + (d_r * p).sum(1)
        b = -d_rstd * rstd.pow(3) / C
        a = d_mu / C - b * mu
        if x.transpose(1, 2).is_contiguous():  # x is a transposed [B, C, L] map: answer in kind
            gx = torch.bmm(g.transpose(1, 2), d_t)  # [B, C, L]
            gx.baddbmm_(grad_u.transpose(1, 2), r)
            gx.addcmul_(x.transpose(1, 2), b.unsqueeze(1)).add_(a.unsqueeze(1))
            gx = gx.transpose(1, 2)
        else:
            gx = torch.bmm(d_t.transpose(1, 2), g)  # [B, L, C]
            gx.baddbmm_(r.transpose(1, 2), grad_u)
            gx.addcmul_(x, b.unsqueeze(-1)).add_(a.unsqueeze(-1))
        return grad_g, gx, None, None


def folded_norm_attention(g, x, eps, scale):
    """``(U, P)``: U [B, M, C] = Σ_j P_ij n_j and P [B, M, L] = softmax_j(scale · g_i · n_j), with
    n_j the LayerNorm (eps, no affine part) of token x_j. g [B, M, C] and x [B, L, C] floating,
    same dtype and device (unchecked: an internal helper of TemplateCrossAttention).
    Differentiable in g and x (both outputs)."""
    return _FoldedNormAttention.apply(g, x, float(eps), float(scale))

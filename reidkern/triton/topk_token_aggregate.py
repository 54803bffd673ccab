"""Triton kernels of topk_token_aggregate (CAL DRM): one program per (batch, part).

Forward: k rounds of arg-max over the part's score column (NaN first, ties to the lowest index),
then the score-weighted mean of the kept token rows, channel tile by channel tile. Backward: per
(batch, part), a_t = T[i_t] . g and dS = (a_t - a_bar) / Z at the kept tokens; dT rows receive
(s_t / Z) g by atomic adds (a token can be kept by several parts).
Registered as ``reidkern::topk_token_aggregate_triton_fwd/_bwd`` (torch.library.triton_op).
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton


@triton.jit
def _fwd_kernel(s_ptr, t_ptr, parts_ptr, idx_ptr, sel_ptr, Np, L, C, K,
                ss0, ss1, ss2, ts0, ts1,
                BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    bp = tl.program_id(0).to(tl.int64)
    b = bp // Np
    p = bp % Np
    offs_l = tl.arange(0, BLOCK_L)
    in_l = offs_l < L
    s = tl.load(s_ptr + b * ss0 + offs_l * ss1 + p * ss2, mask=in_l, other=0.0)
    taken = offs_l >= L
    offs_k = tl.arange(0, BLOCK_K)
    kept_idx = tl.zeros((BLOCK_K,), tl.int64)
    kept_w = tl.zeros((BLOCK_K,), s.dtype)
    for t in range(0, K):
        # NaN ranks above every number (torch.sort(descending=True)'s order, as the C++ and CUDA
        # kernels): compiled graphs skip the Python NaN check, and s == max(s) never holds for a
        # NaN, which would leave no hit and j = BLOCK_L, out of bounds.
        nan = (~taken) & (s != s)
        any_nan = tl.max(nan.to(tl.int32), axis=0) > 0
        cand = tl.where(taken | nan, float("-inf"), s)
        mx = tl.max(cand, axis=0)
        hit = tl.where(any_nan, nan, (~taken) & (s == mx))
        j = tl.min(tl.where(hit, offs_l, BLOCK_L), axis=0)
        taken = taken | (offs_l == j)
        kept_idx = tl.where(offs_k == t, j.to(tl.int64), kept_idx)
        kept_w = tl.where(offs_k == t, tl.where(any_nan, float("nan"), mx), kept_w)
    in_k = offs_k < K
    kept_w = tl.where(in_k, kept_w, 0.0)
    z = tl.sum(kept_w, axis=0)
    zz = tl.where(z != 0, z, 1.0)  # divided by, never inverted: 1/Z overflows for a denormal Z
    tl.store(idx_ptr + bp * K + offs_k, kept_idx, mask=in_k)
    tl.store(sel_ptr + (b * L + kept_idx) * Np + p, kept_w, mask=in_k)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        in_c = offs_c < C
        rows = tl.load(t_ptr + b * ts0 + kept_idx[:, None] * ts1 + offs_c[None, :],
                       mask=in_k[:, None] & in_c[None, :], other=0.0)
        acc = tl.sum(rows * kept_w[:, None], axis=0) / zz
        tl.store(parts_ptr + bp * C + offs_c, acc, mask=in_c)


@triton.jit
def _bwd_kernel(gp_ptr, gs_ptr, s_ptr, t_ptr, idx_ptr, ds_ptr, dt_ptr, Np, L, C, K,
                ss0, ss1, ss2, ts0, ts1, dts0, dts1,
                HAS_GS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    bp = tl.program_id(0).to(tl.int64)
    b = bp // Np
    p = bp % Np
    offs_k = tl.arange(0, BLOCK_K)
    in_k = offs_k < K
    idx = tl.load(idx_ptr + bp * K + offs_k, mask=in_k, other=0)
    w = tl.load(s_ptr + b * ss0 + idx * ss1 + p * ss2, mask=in_k, other=0.0)
    z = tl.sum(w, axis=0)
    zz = tl.where(z != 0, z, 1.0)  # divided by, never inverted: 1/Z overflows for a denormal Z
    a = tl.zeros((BLOCK_K,), w.dtype)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        in_c = offs_c < C
        g = tl.load(gp_ptr + bp * C + offs_c, mask=in_c, other=0.0)
        rows = tl.load(t_ptr + b * ts0 + idx[:, None] * ts1 + offs_c[None, :],
                       mask=in_k[:, None] & in_c[None, :], other=0.0)
        a += tl.sum(rows * g[None, :], axis=1)
        tl.atomic_add(dt_ptr + b * dts0 + idx[:, None] * dts1 + offs_c[None, :],
                      (w / zz)[:, None] * g[None, :], mask=in_k[:, None] & in_c[None, :])
    abar = tl.sum(w * a, axis=0) / zz
    ds = (a - abar) / zz
    if HAS_GS:
        ds += tl.load(gs_ptr + (b * L + idx) * Np + p, mask=in_k, other=0.0)
    tl.store(ds_ptr + (b * L + idx) * Np + p, ds, mask=in_k)


@triton_op("reidkern::topk_token_aggregate_triton_fwd", mutates_args=())
def topk_token_aggregate_triton_fwd(scores: torch.Tensor, tokens: torch.Tensor,
                                    k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, L, Np = scores.shape
    C = tokens.shape[2]
    parts = scores.new_empty(B, Np, C)
    indices = scores.new_empty(B, Np, k, dtype=torch.int64)
    selected = scores.new_zeros(B, L, Np)
    if B * Np == 0:
        return parts, indices, selected
    wrap_triton(_fwd_kernel)[(B * Np,)](
        scores, tokens, parts, indices, selected, Np, L, C, k,
        scores.stride(0), scores.stride(1), scores.stride(2), tokens.stride(0), tokens.stride(1),
        BLOCK_L=triton.next_power_of_2(L), BLOCK_K=triton.next_power_of_2(k),
        BLOCK_C=min(128, triton.next_power_of_2(C)))
    return parts, indices, selected


@triton_op("reidkern::topk_token_aggregate_triton_bwd", mutates_args=())
def topk_token_aggregate_triton_bwd(grad_parts: torch.Tensor, grad_selected: torch.Tensor | None,
                                    scores: torch.Tensor, tokens: torch.Tensor,
                                    indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, L, Np = scores.shape
    C = tokens.shape[2]
    k = indices.shape[2]
    dscores = scores.new_zeros(B, L, Np)
    dtokens = torch.zeros_like(tokens)
    if B * Np == 0:
        return dscores, dtokens
    wrap_triton(_bwd_kernel)[(B * Np,)](
        grad_parts, grad_selected if grad_selected is not None else scores.new_empty(0),
        scores, tokens, indices, dscores, dtokens, Np, L, C, k,
        scores.stride(0), scores.stride(1), scores.stride(2), tokens.stride(0), tokens.stride(1),
        dtokens.stride(0), dtokens.stride(1),
        HAS_GS=grad_selected is not None, BLOCK_K=triton.next_power_of_2(k),
        BLOCK_C=min(128, triton.next_power_of_2(C)))
    return dscores, dtokens


def topk_token_aggregate_triton(scores, tokens, k):
    """Triton implementation; same contract as ``torch.ops.reidkern.topk_token_aggregate_fwd``."""
    return topk_token_aggregate_triton_fwd(scores, tokens, int(k))

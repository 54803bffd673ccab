"""Triton kernels of template_attention: fused forward (online softmax over key tiles, log-sum-exp
saved per query row) and fused backward (probabilities recomputed from the log-sum-exp).

Forward: one program per (batch, head, block of queries); the head dim is held whole in one tile
(padded to a power of two, up to 512), keys are walked in tiles. Backward: one program per
(batch, head): a first sweep over the key tiles gives delta_i = sum_j P_ij dP_ij, a second one
accumulates dK, dV per key tile and dQ in place (the program owns its rows, no atomics).
Registered as ``reidkern::template_attention_triton_fwd/_bwd`` (torch.library.triton_op), so the
path works under torch.compile and autograd like the compiled kernels.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton


def _p2(n, lo=16):
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


@triton.jit
def _logits(q, k_ptr, kb, ks2, offs_n, offs_d, L, D, scale, mask_ptr, mb, HAS_MASK: tl.constexpr):
    in_n = offs_n < L
    k = tl.load(k_ptr + kb + offs_n[:, None] * ks2 + offs_d[None, :],
                mask=in_n[:, None] & (offs_d[None, :] < D), other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    valid = in_n
    if HAS_MASK:
        pad = tl.load(mask_ptr + mb + offs_n, mask=in_n, other=1)
        valid = valid & (pad == 0)
    return s, valid


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, lse_ptr, mean_ptr, w_ptr,
                H, Nq, L, D, scale,
                qs0, qs1, qs2, ks0, ks1, ks2, vs0, vs1, vs2,
                HAS_MASK: tl.constexpr, WEIGHTS: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    mblk = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_m = offs_m < Nq
    q = tl.load(q_ptr + b * qs0 + h * qs1 + offs_m[:, None] * qs2 + offs_d[None, :],
                mask=in_m[:, None] & (offs_d[None, :] < D), other=0.0)
    kb = b * ks0 + h * ks1
    vb = b * vs0 + h * vs1
    mb = b * L
    m_i = tl.full((BLOCK_M,), float("-inf"), q.dtype)
    l_i = tl.zeros((BLOCK_M,), q.dtype)
    sum_s = tl.zeros((BLOCK_M,), q.dtype)
    n_valid = tl.zeros((), tl.int32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), q.dtype)
    for n0 in range(0, L, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s, valid = _logits(q, k_ptr, kb, ks2, offs_n, offs_d, L, D, scale, mask_ptr, mb, HAS_MASK)
        n_valid += tl.sum(valid.to(tl.int32), axis=0)
        sum_s += tl.sum(tl.where(valid[None, :], s, 0.0), axis=1)
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + vb + offs_n[:, None] * vs2 + offs_d[None, :],
                    mask=(offs_n[:, None] < L) & (offs_d[None, :] < D), other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        m_i = m_new
    has = l_i > 0
    out = tl.where(has[:, None], acc / tl.where(has, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    row = bh * Nq + offs_m
    tl.store(out_ptr + row[:, None] * D + offs_d[None, :], out, mask=in_m[:, None] & (offs_d[None, :] < D))
    tl.store(lse_ptr + row, lse, mask=in_m)
    tl.store(mean_ptr + row, sum_s / tl.maximum(n_valid, 1).to(q.dtype), mask=in_m)
    if WEIGHTS:
        for n0 in range(0, L, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            s, valid = _logits(q, k_ptr, kb, ks2, offs_n, offs_d, L, D, scale, mask_ptr, mb, HAS_MASK)
            w = tl.where(valid[None, :] & has[:, None], tl.exp(s - lse[:, None]), 0.0)
            tl.store(w_ptr + row[:, None] * L + offs_n[None, :], w, mask=in_m[:, None] & (offs_n[None, :] < L))


@triton.jit
def _bwd_kernel(do_ptr, gw_ptr, gm_ptr, q_ptr, k_ptr, v_ptr, mask_ptr, lse_ptr,
                dq_ptr, dk_ptr, dv_ptr, H, Nq, L, D, scale,
                qs0, qs1, qs2, ks0, ks1, ks2, vs0, vs1, vs2, dks0, dks1, dks2, dvs0, dvs1, dvs2,
                HAS_MASK: tl.constexpr, HAS_GW: tl.constexpr, HAS_GM: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_d = tl.arange(0, BLOCK_D)
    in_d = offs_d < D
    kb = b * ks0 + h * ks1
    vb = b * vs0 + h * vs1
    mb = b * L
    qb = b * qs0 + h * qs1
    n_valid = tl.zeros((), tl.int32)
    for n0 in range(0, L, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_n = offs_n < L
        if HAS_MASK:
            pad = tl.load(mask_ptr + mb + offs_n, mask=in_n, other=1)
            n_valid += tl.sum((in_n & (pad == 0)).to(tl.int32), axis=0)
        else:
            n_valid += tl.sum(in_n.to(tl.int32), axis=0)
    inv_nv = 1.0 / tl.maximum(n_valid, 1).to(k_ptr.dtype.element_ty)
    for n0 in range(0, L, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_n = offs_n < L
        k = tl.load(k_ptr + kb + offs_n[:, None] * ks2 + offs_d[None, :], mask=in_n[:, None] & in_d[None, :], other=0.0)
        v = tl.load(v_ptr + vb + offs_n[:, None] * vs2 + offs_d[None, :], mask=in_n[:, None] & in_d[None, :], other=0.0)
        valid = in_n
        if HAS_MASK:
            pad = tl.load(mask_ptr + mb + offs_n, mask=in_n, other=1)
            valid = valid & (pad == 0)
        dk = tl.zeros((BLOCK_N, BLOCK_D), k.dtype)
        dv = tl.zeros((BLOCK_N, BLOCK_D), k.dtype)
        for m0 in range(0, Nq, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            in_m = offs_m < Nq
            row = bh * Nq + offs_m
            q = tl.load(q_ptr + qb + offs_m[:, None] * qs2 + offs_d[None, :], mask=in_m[:, None] & in_d[None, :], other=0.0)
            do = tl.load(do_ptr + row[:, None] * D + offs_d[None, :], mask=in_m[:, None] & in_d[None, :], other=0.0)
            lse = tl.load(lse_ptr + row, mask=in_m, other=float("-inf"))
            live = lse > float("-inf")
            lse_s = tl.where(live, lse, 0.0)
            # delta_i = sum over all keys of P_ij dP_ij (full sweep over the key tiles)
            delta = tl.zeros((BLOCK_M,), k.dtype)
            for j0 in range(0, L, BLOCK_N):
                offs_j = j0 + tl.arange(0, BLOCK_N)
                s_j, valid_j = _logits(q, k_ptr, kb, ks2, offs_j, offs_d, L, D, scale, mask_ptr, mb, HAS_MASK)
                p_j = tl.where(valid_j[None, :] & live[:, None], tl.exp(s_j - lse_s[:, None]), 0.0)
                vj = tl.load(v_ptr + vb + offs_j[:, None] * vs2 + offs_d[None, :],
                             mask=(offs_j[:, None] < L) & in_d[None, :], other=0.0)
                dp_j = tl.dot(do, tl.trans(vj), input_precision="ieee")
                if HAS_GW:
                    dp_j += tl.load(gw_ptr + row[:, None] * L + offs_j[None, :],
                                    mask=in_m[:, None] & (offs_j[None, :] < L), other=0.0)
                delta += tl.sum(p_j * dp_j, axis=1)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            p = tl.where(valid[None, :] & live[:, None], tl.exp(s - lse_s[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            if HAS_GW:
                dp += tl.load(gw_ptr + row[:, None] * L + offs_n[None, :],
                              mask=in_m[:, None] & in_n[None, :], other=0.0)
            ds = p * (dp - delta[:, None])
            if HAS_GM:
                gm = tl.load(gm_ptr + row, mask=in_m, other=0.0)
                ds += tl.where(valid[None, :] & in_m[:, None], gm[:, None] * inv_nv, 0.0)
            ds = ds * scale
            dv += tl.dot(tl.trans(p), do, input_precision="ieee")
            dk += tl.dot(tl.trans(ds), q, input_precision="ieee")
            dq_ptrs = dq_ptr + row[:, None] * D + offs_d[None, :]
            dq_mask = in_m[:, None] & in_d[None, :]
            dq = tl.load(dq_ptrs, mask=dq_mask, other=0.0) + tl.dot(ds, k, input_precision="ieee")
            tl.store(dq_ptrs, dq, mask=dq_mask)
        tl.store(dk_ptr + b * dks0 + h * dks1 + offs_n[:, None] * dks2 + offs_d[None, :], dk,
                 mask=in_n[:, None] & in_d[None, :])
        tl.store(dv_ptr + b * dvs0 + h * dvs1 + offs_n[:, None] * dvs2 + offs_d[None, :], dv,
                 mask=in_n[:, None] & in_d[None, :])


def _blocks(Nq, L, D):
    bd = _p2(D)
    bn = 64 if bd <= 64 else (32 if bd <= 256 else 16)
    return min(_p2(Nq), 64), bn, bd


@triton_op("reidkern::template_attention_triton_fwd", mutates_args=())
def template_attention_triton_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  key_padding_mask: torch.Tensor | None, scale: float,
                                  return_weights: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, L, D = k.shape
    Nq = q.shape[2]
    out = q.new_empty(B, H, Nq, D)
    lse = q.new_empty(B, H, Nq)
    mean = q.new_empty(B, H, Nq)
    weights = q.new_empty(B, H, Nq, L) if return_weights else q.new_empty(0)
    if B * H * Nq == 0:
        return out, lse, mean, weights
    bm, bn, bd = _blocks(Nq, L, D)
    qs0 = q.stride(0) if q.shape[0] == B else 0
    mask = key_padding_mask if key_padding_mask is not None else q.new_empty(0, dtype=torch.bool)
    grid = (B * H, triton.cdiv(Nq, bm))
    wrap_triton(_fwd_kernel)[grid](
        q, k, v, mask, out, lse, mean, weights, H, Nq, L, D, scale,
        qs0, q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        HAS_MASK=key_padding_mask is not None, WEIGHTS=return_weights,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd)
    return out, lse, mean, weights


@triton_op("reidkern::template_attention_triton_bwd", mutates_args=())
def template_attention_triton_bwd(grad_out: torch.Tensor, grad_weights: torch.Tensor | None,
                                  grad_mean_logit: torch.Tensor | None, q: torch.Tensor,
                                  k: torch.Tensor, v: torch.Tensor,
                                  key_padding_mask: torch.Tensor | None, lse: torch.Tensor,
                                  scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, L, D = k.shape
    Nq = q.shape[2]
    dq = q.new_zeros(B, H, Nq, D)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if B * H == 0 or L == 0:
        return dq, dk.zero_(), dv.zero_()
    bm, bn, bd = _blocks(Nq, L, D)
    qs0 = q.stride(0) if q.shape[0] == B else 0
    empty = q.new_empty(0)
    mask = key_padding_mask if key_padding_mask is not None else q.new_empty(0, dtype=torch.bool)
    wrap_triton(_bwd_kernel)[(B * H,)](
        grad_out, grad_weights if grad_weights is not None else empty,
        grad_mean_logit if grad_mean_logit is not None else empty, q, k, v, mask, lse,
        dq, dk, dv, H, Nq, L, D, scale,
        qs0, q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        HAS_MASK=key_padding_mask is not None, HAS_GW=grad_weights is not None,
        HAS_GM=grad_mean_logit is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd)
    return dq, dk, dv


def template_attention_triton(q, k, v, key_padding_mask, scale, return_weights):
    """Triton implementation; same contract as ``torch.ops.reidkern.template_attention_fwd``."""
    return template_attention_triton_fwd(q, k, v, key_padding_mask, float(scale), bool(return_weights))

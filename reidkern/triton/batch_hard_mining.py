"""Triton kernels of reidkern batch_hard_mining and its backward.

Forward: one program per block of BLOCK_M anchors. It walks the candidates in blocks of BLOCK_N,
builds the [BLOCK_M, BLOCK_N] Gram block over D in BLOCK_K slices (``tl.dot`` with IEEE float32
precision, no TF32, so mining matches the float32 reference; float64 by broadcast-and-sum), turns it
into distances and keeps, per anchor, a running hardest positive / negative (strict improvement
only, and the lowest index within a block, so ties go to the lowest candidate index). Nothing
B x M is stored.

Backward: one program per anchor; its two chosen pairs give grad_x[i] directly and grad_y[j] through
``tl.atomic_add`` (summation order across anchors is not fixed on GPU).
Registered as ``reidkern::batch_hard_mining_triton_fwd/_bwd`` (torch.library.triton_op).
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from reidkern._metric import NORM_EPS, SQ_CLAMP, Metric

# Kernels read module globals only when they are tl.constexpr.
_EUCLIDEAN = tl.constexpr(int(Metric.EUCLIDEAN))
_SQEUCLIDEAN = tl.constexpr(int(Metric.SQEUCLIDEAN))
_COSINE = tl.constexpr(int(Metric.COSINE))
_SQ_CLAMP = tl.constexpr(SQ_CLAMP)
_NORM_EPS = tl.constexpr(NORM_EPS)


@triton.jit
def _bhm_fwd_kernel(
    x_ptr, y_ptr, lx_ptr, ly_ptr, ap_ptr, an_ptr, pi_ptr, ni_ptr,
    B, M, D, sxb, sxd, syb, syd, self_offset,
    METRIC: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    in_m = offs_m < B
    la = tl.load(lx_ptr + offs_m, mask=in_m, other=-1)
    dt = x_ptr.dtype.element_ty
    nx = tl.zeros([BLOCK_M], dtype=dt)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_ptr + offs_m[:, None] * sxb + offs_k[None, :] * sxd,
                    mask=in_m[:, None] & (offs_k[None, :] < D), other=0.0)
        nx += tl.sum(a * a, axis=1)
    if METRIC == _COSINE:
        nx = 1.0 / tl.maximum(tl.sqrt(nx), _NORM_EPS)
    best_p = tl.full([BLOCK_M], float("-inf"), dtype=dt)
    best_n = tl.full([BLOCK_M], float("inf"), dtype=dt)
    idx_p = tl.full([BLOCK_M], -1, dtype=tl.int64)
    idx_n = tl.full([BLOCK_M], -1, dtype=tl.int64)
    big = M + 1
    for n0 in range(0, M, BLOCK_N):
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        in_n = offs_n < M
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=dt)
        ny = tl.zeros([BLOCK_N], dtype=dt)
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            in_k = offs_k < D
            a = tl.load(x_ptr + offs_m[:, None] * sxb + offs_k[None, :] * sxd,
                        mask=in_m[:, None] & in_k[None, :], other=0.0)
            b = tl.load(y_ptr + offs_n[:, None] * syb + offs_k[None, :] * syd,
                        mask=in_n[:, None] & in_k[None, :], other=0.0)
            if IS_FP64:
                acc += tl.sum(a[:, None, :] * b[None, :, :], axis=2)
            else:
                acc += tl.dot(a, tl.trans(b), input_precision="ieee")
            ny += tl.sum(b * b, axis=1)
        if METRIC == _COSINE:
            d = 1.0 - acc * nx[:, None] * (1.0 / tl.maximum(tl.sqrt(ny), _NORM_EPS))[None, :]
        else:
            sq = nx[:, None] + ny[None, :] - 2.0 * acc
            if METRIC == _EUCLIDEAN:
                d = tl.sqrt(tl.maximum(sq, _SQ_CLAMP))
            else:
                d = tl.maximum(sq, 0.0)
        lb = tl.load(ly_ptr + offs_n, mask=in_n, other=-1)
        same = la[:, None] == lb[None, :]
        is_self = (offs_n[None, :] == offs_m[:, None] + self_offset) & (self_offset >= 0)
        pos = same & in_n[None, :] & ~is_self
        neg = (~same) & in_n[None, :]
        dp = tl.where(pos, d, float("-inf"))
        tmax = tl.max(dp, axis=1)
        tip = tl.min(tl.where(pos & (dp == tmax[:, None]), offs_n[None, :], big), axis=1)
        upd = (tip < big) & (tmax > best_p)
        best_p = tl.where(upd, tmax, best_p)
        idx_p = tl.where(upd, tip, idx_p)
        dn = tl.where(neg, d, float("inf"))
        tmin = tl.min(dn, axis=1)
        tin = tl.min(tl.where(neg & (dn == tmin[:, None]), offs_n[None, :], big), axis=1)
        upd = (tin < big) & (tmin < best_n)
        best_n = tl.where(upd, tmin, best_n)
        idx_n = tl.where(upd, tin, idx_n)
    tl.store(ap_ptr + offs_m, tl.where(idx_p >= 0, best_p, 0.0), mask=in_m)
    tl.store(an_ptr + offs_m, tl.where(idx_n >= 0, best_n, 0.0), mask=in_m)
    tl.store(pi_ptr + offs_m, idx_p, mask=in_m)
    tl.store(ni_ptr + offs_m, idx_n, mask=in_m)


@triton.jit
def _bhm_bwd_kernel(
    x_ptr, y_ptr, gx_ptr, gy_ptr, grad_ptrs_ap, grad_ptrs_an, dap_ptr, dan_ptr, pi_ptr, ni_ptr,
    M, D, METRIC: tl.constexpr, BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    for kind in tl.static_range(2):
        if kind == 0:
            j = tl.load(pi_ptr + i)
            g = tl.load(grad_ptrs_ap + i)
            dist = tl.load(dap_ptr + i)
        else:
            j = tl.load(ni_ptr + i)
            g = tl.load(grad_ptrs_an + i)
            dist = tl.load(dan_ptr + i)
        ok = (j >= 0) & (j < M) & (g != 0.0)
        j = tl.where(ok, j, 0)
        g = tl.where(ok, g, 0.0)
        if METRIC == _COSINE:
            xx = tl.zeros([BLOCK_D], dtype=g.dtype)
            yy = tl.zeros([BLOCK_D], dtype=g.dtype)
            xy = tl.zeros([BLOCK_D], dtype=g.dtype)
            for k0 in range(0, D, BLOCK_D):
                offs = k0 + tl.arange(0, BLOCK_D)
                xv = tl.load(x_ptr + i * D + offs, mask=offs < D, other=0.0)
                yv = tl.load(y_ptr + j * D + offs, mask=offs < D, other=0.0)
                xx += xv * xv
                yy += yv * yv
                xy += xv * yv
            nxr = tl.sqrt(tl.sum(xx, axis=0))
            nyr = tl.sqrt(tl.sum(yy, axis=0))
            nx = tl.maximum(nxr, _NORM_EPS)
            ny = tl.maximum(nyr, _NORM_EPS)
            cos = tl.sum(xy, axis=0) / (nx * ny)
            c0 = tl.where(nxr >= _NORM_EPS, g * cos / (nx * nx), 0.0)
            c1 = -g / (nx * ny)
            c2 = -g / (nx * ny)
            c3 = tl.where(nyr >= _NORM_EPS, g * cos / (ny * ny), 0.0)
        else:
            if METRIC == _SQEUCLIDEAN:
                s = 2.0 * g
            else:
                thr = tl.sqrt(tl.zeros_like(dist) + _SQ_CLAMP)  # the clamped distance itself
                s = tl.where(dist > thr, g / tl.where(dist > thr, dist, 1.0), 0.0)
            c0 = s
            c1 = -s
            c2 = -s
            c3 = s
        for k0 in range(0, D, BLOCK_D):
            offs = k0 + tl.arange(0, BLOCK_D)
            m = offs < D
            xv = tl.load(x_ptr + i * D + offs, mask=m, other=0.0)
            yv = tl.load(y_ptr + j * D + offs, mask=m, other=0.0)
            gxv = tl.load(gx_ptr + i * D + offs, mask=m, other=0.0)
            tl.store(gx_ptr + i * D + offs, gxv + c0 * xv + c1 * yv, mask=m)
            # not ok: coefficients are 0 and j = 0, so this adds zeros
            tl.atomic_add(gy_ptr + j * D + offs, c2 * xv + c3 * yv, mask=m)


@triton_op("reidkern::batch_hard_mining_triton_fwd", mutates_args=())
def batch_hard_mining_triton_fwd(embeddings: torch.Tensor, labels: torch.Tensor,
                                 ref_embeddings: torch.Tensor, ref_labels: torch.Tensor, metric: int,
                                 self_offset: int
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton implementation; same contract as ``torch.ops.reidkern.batch_hard_mining_fwd``."""
    B, D = embeddings.shape
    M = ref_embeddings.shape[0]
    dev = embeddings.device
    dist_ap = embeddings.new_empty(B)
    dist_an = embeddings.new_empty(B)
    p_index = torch.empty(B, dtype=torch.int64, device=dev)
    n_index = torch.empty(B, dtype=torch.int64, device=dev)
    if B == 0:
        return dist_ap, dist_an, p_index, n_index
    if M == 0:
        return dist_ap.zero_(), dist_an.zero_(), p_index.fill_(-1), n_index.fill_(-1)
    fp64 = embeddings.dtype == torch.float64
    block_m, block_n = (16, 16) if fp64 else (32, 32)
    block_k = 16 if fp64 else 32
    grid = (triton.cdiv(B, block_m),)
    wrap_triton(_bhm_fwd_kernel)[grid](
        embeddings, ref_embeddings, labels, ref_labels, dist_ap, dist_an, p_index, n_index,
        B, M, D, embeddings.stride(0), embeddings.stride(1), ref_embeddings.stride(0),
        ref_embeddings.stride(1), int(self_offset),
        METRIC=int(metric), IS_FP64=fp64, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )
    return dist_ap, dist_an, p_index, n_index


@triton_op("reidkern::batch_hard_mining_triton_bwd", mutates_args=())
def batch_hard_mining_triton_bwd(grad_dist_ap: torch.Tensor, grad_dist_an: torch.Tensor,
                                 embeddings: torch.Tensor, ref_embeddings: torch.Tensor,
                                 dist_ap: torch.Tensor, dist_an: torch.Tensor, p_index: torch.Tensor,
                                 n_index: torch.Tensor, metric: int
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton backward; same contract as ``torch.ops.reidkern.batch_hard_mining_bwd``.
    Where the Euclidean clamp was active (dist == sqrt(1e-12)) the gradient is 0."""
    x = embeddings.contiguous()
    y = ref_embeddings.contiguous()
    B, D = x.shape
    M = y.shape[0]
    grad_x = torch.zeros_like(x)
    grad_y = torch.zeros_like(y)
    if B == 0 or M == 0:
        return grad_x, grad_y
    wrap_triton(_bhm_bwd_kernel)[(B,)](
        x, y, grad_x, grad_y, grad_dist_ap.contiguous(), grad_dist_an.contiguous(),
        dist_ap.contiguous(), dist_an.contiguous(), p_index.contiguous(), n_index.contiguous(),
        M, D, METRIC=int(metric), BLOCK_D=min(1024, triton.next_power_of_2(D)),
    )
    return grad_x, grad_y

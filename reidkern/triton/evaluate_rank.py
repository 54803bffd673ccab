"""Triton kernel of reidkern evaluate_rank: one program per query, no sort.

The program walks the gallery in tiles; a tile holding positives is compared, as a
[BLOCK_A, BLOCK_B] block, against every gallery tile to count, for each positive, the valid
entries ranked ahead of it (distance, then index: the stable-sort order) and the positives among
them. Tiles without positives are skipped, so the cost is O(tiles with positives x G) per query.
Non-finite distances are flagged with first_hit = -2.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _evaluate_rank_kernel(
    dist_ptr, s0, s1, q_pids_ptr, g_pids_ptr, q_camids_ptr, g_camids_ptr,
    first_hit_ptr, ap_ptr, inp_ptr, num_g,
    TRAPEZOID: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    row = dist_ptr + i * s0
    qp = tl.load(q_pids_ptr + i)
    qc = tl.load(q_camids_ptr + i)
    ap = tl.zeros((), dtype=tl.float64)
    num_pos = tl.zeros((), dtype=tl.int64)
    first = tl.full((), 2**62, dtype=tl.int64)
    last = tl.full((), -1, dtype=tl.int64)
    nonfinite = tl.zeros((), dtype=tl.int32)
    for base_a in range(0, num_g, BLOCK_A):
        offs_a = base_a + tl.arange(0, BLOCK_A).to(tl.int64)
        in_a = offs_a < num_g
        pid_a = tl.load(g_pids_ptr + offs_a, mask=in_a, other=-1)
        cam_a = tl.load(g_camids_ptr + offs_a, mask=in_a, other=-1)
        pos_a = in_a & (pid_a == qp) & (cam_a != qc)
        m = tl.sum(pos_a.to(tl.int32), axis=0)
        d_a = tl.load(row + offs_a * s1, mask=in_a, other=0.0)
        nonfinite += tl.sum((in_a & ~(tl.abs(d_a) < float("inf"))).to(tl.int32), axis=0)
        if m > 0:
            ahead = tl.zeros((BLOCK_A,), dtype=tl.int64)
            pos_ahead = tl.zeros((BLOCK_A,), dtype=tl.int64)
            for base_b in range(0, num_g, BLOCK_B):
                offs_b = base_b + tl.arange(0, BLOCK_B).to(tl.int64)
                in_b = offs_b < num_g
                pid_b = tl.load(g_pids_ptr + offs_b, mask=in_b, other=-1)
                cam_b = tl.load(g_camids_ptr + offs_b, mask=in_b, other=-1)
                valid_b = in_b & ~((pid_b == qp) & (cam_b == qc))
                d_b = tl.load(row + offs_b * s1, mask=in_b, other=0.0)
                before = (d_b[None, :] < d_a[:, None]) | (
                    (d_b[None, :] == d_a[:, None]) & (offs_b[None, :] < offs_a[:, None]))
                before = before & valid_b[None, :]
                ahead += tl.sum(before.to(tl.int64), axis=1)
                pos_ahead += tl.sum((before & (pid_b == qp)[None, :]).to(tl.int64), axis=1)
            r = ahead.to(tl.float64)
            k = pos_ahead.to(tl.float64)
            precision = (k + 1.0) / (r + 1.0)
            if TRAPEZOID:
                old = tl.where(r == 0.0, 1.0, k / tl.maximum(r, 1.0))
                contrib = 0.5 * (old + precision)
            else:
                contrib = precision
            ap += tl.sum(tl.where(pos_a, contrib, 0.0), axis=0)
            num_pos += m
            first = tl.minimum(first, tl.min(tl.where(pos_a, ahead, 2**62), axis=0))
            last = tl.maximum(last, tl.max(tl.where(pos_a, ahead, -1), axis=0))
    has = num_pos > 0
    tl.store(first_hit_ptr + i, tl.where(nonfinite > 0, -2, tl.where(has, first, -1)))
    tl.store(ap_ptr + i, tl.where(has, ap / tl.maximum(num_pos, 1).to(tl.float64), 0.0))
    tl.store(inp_ptr + i, tl.where(has, num_pos.to(tl.float64) / tl.maximum(last + 1, 1).to(tl.float64), 0.0))


def evaluate_rank_triton(distmat, q_pids, g_pids, q_camids, g_camids, trapezoid=False):
    """Triton implementation; same contract as ``torch.ops.reidkern.evaluate_rank``."""
    num_q, num_g = distmat.shape
    dev = distmat.device
    first_hit = torch.empty(num_q, dtype=torch.int64, device=dev)
    all_ap = torch.empty(num_q, dtype=torch.float64, device=dev)
    all_inp = torch.empty(num_q, dtype=torch.float64, device=dev)
    if num_q == 0:
        return first_hit, all_ap, all_inp
    _evaluate_rank_kernel[(num_q,)](
        distmat, distmat.stride(0), distmat.stride(1), q_pids, g_pids, q_camids, g_camids,
        first_hit, all_ap, all_inp, num_g,
        TRAPEZOID=bool(trapezoid), BLOCK_A=32, BLOCK_B=128,
    )
    return first_hit, all_ap, all_inp

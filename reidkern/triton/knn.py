"""Triton kernel of reidkern knn: one program per block of rows, streaming over column tiles.

Each tile of squared Euclidean distances is computed in float64 in difference form (sum over
feature chunks of (x - y)^2), so a sample's distance to itself is exactly 0 and duplicates tie
exactly. The program keeps a running list of the k best (distance, index) per row and merges each
tile into it by k rounds of "smallest distance, then smallest index" extraction, and keeps the
row maximum. Memory: O(BLOCK_M x BLOCK_N) per program, O(M k) output.
"""
import torch
import triton
import triton.language as tl

_BIG = 2**62


@triton.jit
def _knn_kernel(x_ptr, y_ptr, out_d_ptr, out_i_ptr, out_max_ptr, M, NY, D, k, index_offset,
                KP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < M
    slots = tl.arange(0, KP)
    best_d = tl.full((BLOCK_M, KP), float("inf"), tl.float64)
    best_i = tl.full((BLOCK_M, KP), _BIG, tl.int64)
    row_max = tl.full((BLOCK_M,), float("-inf"), tl.float64)
    for n0 in range(0, NY, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < NY
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < D
            xv = tl.load(x_ptr + rows[:, None] * D + dd[None, :], mask=row_ok[:, None] & d_ok[None, :],
                         other=0.0).to(tl.float64)
            yv = tl.load(y_ptr + cols[:, None] * D + dd[None, :], mask=col_ok[:, None] & d_ok[None, :],
                         other=0.0).to(tl.float64)
            diff = xv[:, None, :] - yv[None, :, :]
            acc += tl.sum(diff * diff, axis=2)
        row_max = tl.maximum(row_max, tl.max(tl.where(col_ok[None, :], acc, float("-inf")), axis=1))
        dist = tl.where(col_ok[None, :], acc, float("inf"))
        cidx = tl.where(col_ok[None, :], cols[None, :], _BIG) + tl.zeros((BLOCK_M, BLOCK_N), tl.int64)
        new_d = tl.full((BLOCK_M, KP), float("inf"), tl.float64)
        new_i = tl.full((BLOCK_M, KP), _BIG, tl.int64)
        for t in range(0, k):
            m = tl.minimum(tl.min(best_d, axis=1), tl.min(dist, axis=1))
            bi = tl.min(tl.where(best_d == m[:, None], best_i, _BIG), axis=1)
            ti = tl.min(tl.where(dist == m[:, None], cidx, _BIG), axis=1)
            sel = tl.where(m == float("inf"), _BIG, tl.minimum(bi, ti))
            new_d = tl.where(slots[None, :] == t, m[:, None], new_d)
            new_i = tl.where(slots[None, :] == t, sel[:, None], new_i)
            best_d = tl.where(best_i == sel[:, None], float("inf"), best_d)
            best_i = tl.where(best_i == sel[:, None], _BIG, best_i)
            dist = tl.where(cidx == sel[:, None], float("inf"), dist)
            cidx = tl.where(cidx == sel[:, None], _BIG, cidx)
        best_d = new_d
        best_i = new_i
    out_mask = row_ok[:, None] & (slots[None, :] < k)
    offs = rows[:, None] * k + slots[None, :]
    tl.store(out_d_ptr + offs, best_d, mask=out_mask)
    tl.store(out_i_ptr + offs, tl.where(best_i == _BIG, -1, best_i + index_offset), mask=out_mask)
    tl.store(out_max_ptr + rows, row_max, mask=row_ok)


def knn_triton(x, y, k, index_offset=0):
    """Triton implementation; same contract as ``torch.ops.reidkern.knn`` (x, y contiguous)."""
    M, D = x.shape
    NY = y.shape[0]
    dev = x.device
    out_d = torch.empty(M, k, dtype=torch.float64, device=dev)
    out_i = torch.empty(M, k, dtype=torch.int64, device=dev)
    out_max = torch.empty(M, dtype=torch.float64, device=dev)
    if M == 0:
        return out_d, out_i, out_max
    KP = max(16, triton.next_power_of_2(k))
    BLOCK_M, BLOCK_N, BLOCK_D = 16, 64, 16
    grid = (triton.cdiv(M, BLOCK_M),)
    _knn_kernel[grid](x, y, out_d, out_i, out_max, M, NY, D, k, index_offset,
                      KP=KP, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D)
    return out_d, out_i, out_max

"""Eager reference of knn: exact float64 squared Euclidean distances (difference form) in row
blocks, a stable sort per row (ties by index), the row maximum over all columns."""
import torch


def knn_reference(x, y, k, index_offset=0, block=64):
    """Returns ``(distances [M, k] float64, indices [M, k] int64, row_max [M] float64)``; rows with
    fewer than k columns are padded with (inf, -1); row_max is -inf when y is empty."""
    x = torch.as_tensor(x).double()
    y = torch.as_tensor(y).double().to(x.device)
    M, Ny = x.shape[0], y.shape[0]
    dist = torch.full((M, k), float("inf"), dtype=torch.float64, device=x.device)
    idx = torch.full((M, k), -1, dtype=torch.int64, device=x.device)
    rmax = torch.full((M,), float("-inf"), dtype=torch.float64, device=x.device)
    take = min(k, Ny)
    for s in range(0, M, block):
        d = ((x[s:s + block, None, :] - y[None, :, :]) ** 2).sum(-1)
        if Ny == 0:
            continue
        vals, order = torch.sort(d, dim=1, stable=True)
        dist[s:s + block, :take] = vals[:, :take]
        idx[s:s + block, :take] = order[:, :take] + index_offset
        rmax[s:s + block] = d.max(dim=1).values
    return dist, idx, rmax

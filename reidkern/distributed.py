"""Gathering a batch from every process for global mining (``torch.distributed``).

The metric-learning losses in :mod:`reidkern.nn` mine across processes with ``gather=True``:
each process keeps its own rows as anchors and uses the batch gathered from all processes as
candidates. :func:`all_gather_with_grad` is autograd-aware: in the backward, the gradient of the
gathered tensor is summed over processes (``all_reduce``) and each process keeps its own slice, so
with every process calling ``backward`` on its share of the loss, the gradient that reaches the
local rows is exactly that of the loss over the concatenated global batch. Batches may differ in
length between processes (they are padded for the collective and trimmed).

All processes must call these functions in the same order (they are collectives).
"""
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_sizes(n: int, device) -> list:
    size = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _gather_padded(x: torch.Tensor, sizes: list) -> torch.Tensor:
    longest = max(sizes)
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0],) + tuple(x.shape[1:]))
        x = torch.cat([x, pad], 0)
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], 0)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes, offset):
        ctx.offset, ctx.n = offset, x.shape[0]
        return _gather_padded(x.detach(), sizes)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.offset:ctx.offset + ctx.n], None, None


def all_gather_with_grad(x: torch.Tensor):
    """Concatenation of ``x`` [n_r, ...] over processes, in rank order, differentiable.

    Returns ``(gathered, offset)``: ``gathered`` [Σ n_r, ...]; this process's rows are
    ``gathered[offset:offset + n]``. Without a process group: ``(x, 0)``.
    Backward: the gradient of ``gathered`` is summed over processes and sliced (see module doc).
    """
    if not is_distributed():
        return x, 0
    sizes = _gather_sizes(x.shape[0], x.device)
    offset = sum(sizes[:dist.get_rank()])
    return _AllGatherWithGrad.apply(x, sizes, offset), offset


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenation of ``x`` over processes in rank order, without gradient (labels, teachers)."""
    if not is_distributed():
        return x
    return _gather_padded(x, _gather_sizes(x.shape[0], x.device))


def all_reduce_sum_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over processes (a detached copy; ``x`` itself is returned without a group)."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def ddp_loss(loss: torch.Tensor) -> torch.Tensor:
    """A ``gather=True`` loss made ready for ``DistributedDataParallel``: same value, gradient ×
    world size.

    The gathered losses give each process's rows the gradient of the *global* loss (module doc);
    DDP then *averages* parameter gradients over the W processes, which would divide that part of
    the gradient by W (measured: a CE + gathered-triplet run on 2 processes drifts from the
    1-process run with the same global batch). Passing the loss through ``ddp_loss`` before adding
    it to per-process-mean losses (cross entropy) makes the DDP gradient equal the single-process
    one. Without a process group it returns ``loss`` unchanged.
    """
    if not is_distributed():
        return loss
    w = dist.get_world_size()
    return loss * w - (w - 1) * loss.detach()

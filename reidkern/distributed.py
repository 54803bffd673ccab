"""Gathering a batch from every process for global mining (``torch.distributed``).

The metric-learning losses in :mod:`reidkern.nn` mine across processes with ``gather=True``:
each process keeps its own rows as anchors and uses the batch gathered from all processes as
candidates. :func:`all_gather_with_grad` is autograd-aware: in the backward, the gradient of the
gathered tensor is summed over processes (``all_reduce``) and each process keeps its own slice, so
with every process calling ``backward`` on its share of the loss, the gradient that reaches the
local rows is exactly that of the loss over the concatenated global batch. Batches may differ in
length between processes (they are padded for the collective and trimmed).

All processes must call these functions in the same order (they are collectives). Each takes
``group``, the process group to gather over (default: the global group); re-ranking gathers over
its own ``group`` argument through :func:`all_gather_rows`.
"""
import torch
import torch.distributed as dist


def is_distributed(group=None) -> bool:
    """True when a process group (``group``, default the global one) with more than one process is
    initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _gather_sizes(n: int, device, group=None) -> list:
    size = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, size, group=group)
    return [int(s.item()) for s in sizes]


def _gather_padded_parts(x: torch.Tensor, sizes: list, group=None) -> list:
    longest = max(sizes)
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0],) + tuple(x.shape[1:]))
        x = torch.cat([x, pad], 0)
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous(), group=group)
    return [p[:n] for p, n in zip(parts, sizes)]


def _gather_padded(x: torch.Tensor, sizes: list, group=None) -> torch.Tensor:
    return torch.cat(_gather_padded_parts(x, sizes, group), 0)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes, offset, group):
        ctx.offset, ctx.n, ctx.group = offset, x.shape[0], group
        return _gather_padded(x.detach(), sizes, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.offset:ctx.offset + ctx.n], None, None, None


def all_gather_with_grad(x: torch.Tensor, group=None):
    """Concatenation of ``x`` [n_r, ...] over the processes of ``group`` (default: all), in rank
    order, differentiable.

    Returns ``(gathered, offset)``: ``gathered`` [Σ n_r, ...]; this process's rows are
    ``gathered[offset:offset + n]``. Without a process group: ``(x, 0)``.
    Backward: the gradient of ``gathered`` is summed over processes and sliced (see module doc).
    """
    if not is_distributed(group):
        return x, 0
    sizes = _gather_sizes(x.shape[0], x.device, group)
    offset = sum(sizes[:dist.get_rank(group)])
    return _AllGatherWithGrad.apply(x, sizes, offset, group), offset


@torch.no_grad()
def all_gather_rows(x: torch.Tensor, group=None) -> list:
    """``x`` [n_r, ...] of every process of ``group``, in rank order, as a list (first dimensions
    may differ between processes); ``[x]`` without a process group. No gradient."""
    if not is_distributed(group):
        return [x]
    return _gather_padded_parts(x, _gather_sizes(x.shape[0], x.device, group), group)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenation of ``x`` over the processes of ``group`` in rank order, without gradient
    (labels, teachers)."""
    return torch.cat(all_gather_rows(x, group), 0) if is_distributed(group) else x


def all_reduce_sum_no_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Sum of ``x`` over the processes of ``group`` (a detached copy; ``x`` itself is returned
    without a group)."""
    if not is_distributed(group):
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
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

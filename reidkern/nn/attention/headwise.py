"""Per-head matrix products written in place: ``y[:, h] = x[:, h] @ w[h]`` for every head h.

The folded attention (``TemplateCrossAttention._attend_folded_norm``) moves each head's key/value
projection onto that head's queries. As an einsum (``"rhk,hkn->rhn"``) torch runs it as one
batched GEMM over a head-major copy of x and then permutes the result back, two copies of a
[rows, heads, C] tensor per call (forward and backward). With the heads as the inner dimension,
head h's rows form a plain strided matrix (row stride heads·K), so one GEMM per head reads and
writes the tensors where they are, in both directions.
"""
import torch
from torch.autograd.function import once_differentiable


def _per_head(x, w, out):
    for h in range(w.shape[0]):
        torch.mm(x[:, h], w[h], out=out[:, h])
    return out


class _HeadwiseMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return _per_head(x, w, x.new_empty(x.shape[0], w.shape[0], w.shape[2]))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, w = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _per_head(grad_y, w.transpose(1, 2), torch.empty_like(x))
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(w)
            for h in range(w.shape[0]):
                torch.mm(x[:, h].t(), grad_y[:, h], out=grad_w[h])
        return grad_x, grad_w


def headwise_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``y[r, h] = x[r, h] @ w[h]``: x [R, H, K] (any strides), w [H, K, N] → y [R, H, N] contiguous,
    the same as ``torch.einsum("rhk,hkn->rhn", x, w)``. Floating x and w of one dtype and device
    (unchecked: an internal helper of the folded attention). Differentiable in x and w (once)."""
    if torch.compiler.is_compiling():  # graphs take no strided out=; the compiler plans the copies
        return torch.einsum("rhk,hkn->rhn", x, w).contiguous()
    return _HeadwiseMatmul.apply(x, w)

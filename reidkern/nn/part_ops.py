"""Two small fused pieces of a part-based head, each one torch.autograd.Function whose backward
writes every large gradient in one pass (LA-Transformer's head: its part pooling and its 14
AM-Softmax classifiers).

* :func:`grid_part_pool` — row (and column) means of a patch-token grid blended with the CLS
  token. Written with ``mean``/``split`` ops, autograd materialises a full-size [B, N, D] gradient
  per mean, adds them, then concatenates the CLS gradient: four passes over the tokens' gradient
  where one suffices.
* :func:`cosine_part_logits` — ``scale · cos`` between each part's feature and that part's class
  weights. Written as ``F.normalize(weight)``, every step (norm, clamp, divide) keeps and
  differentiates a copy of the [P, C, K] weight, about ten passes over it per step; here the
  weight is never normalised: the logits divide the raw products by the row norms, and the
  backward adds the norm's term to the GEMM's weight gradient in one pass.

Both equal their ``F`` formulations exactly in real arithmetic (float64 checks in
tests/test_part_ops.py and tests/test_la_transformer.py).
"""
import torch

__all__ = ["grid_part_pool", "cosine_part_logits"]


def _pool(tokens, grid, y_pooling, cls_weight, part_weight):
    B, D = tokens.shape[0], tokens.shape[-1]
    gh, gw = grid
    cls, patches = tokens.split([1, gh * gw], dim=1)
    cells = patches.reshape(B, gh, gw, D)
    out = cells.sum(dim=2)  # row sums [B, gh, D]
    if y_pooling:
        out.add_(cells.sum(dim=1))  # + column sums (square grid)
    out.mul_(part_weight / (2 * gw if y_pooling else gw))
    if cls_weight:
        out.add_(cls, alpha=cls_weight)
    return out


class _GridPartPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tokens, grid, y_pooling, cls_weight, part_weight):
        ctx.shape, ctx.grid, ctx.y_pooling = tokens.shape, grid, y_pooling
        ctx.cls_weight, ctx.part_weight = cls_weight, part_weight
        return _pool(tokens, grid, y_pooling, cls_weight, part_weight)

    @staticmethod
    def backward(ctx, grad):
        B, N, D = ctx.shape
        gh, gw = ctx.grid
        # patch (r, c) feeds row part r and, with y-pooling, column part c
        g = grad * (ctx.part_weight / (2 * gw if ctx.y_pooling else gw))
        cls = grad.sum(dim=1, keepdim=True) * ctx.cls_weight
        if torch.compiler.is_compiling():
            cells = g.unsqueeze(2) + g.unsqueeze(1) if ctx.y_pooling else g.unsqueeze(2).expand(B, gh, gw, D)
            return torch.cat([cls, cells.reshape(B, gh * gw, D)], dim=1), None, None, None, None
        # eager: the patch gradient is written straight into its place in the token gradient
        out = grad.new_empty(B, N, D)
        out[:, :1].copy_(cls)
        if ctx.y_pooling:
            torch.add(g.unsqueeze(2), g.unsqueeze(1), out=out[:, 1:].view(B, gh, gw, D))
        else:
            out[:, 1:].view(B, gh, gw, D).copy_(g.unsqueeze(2).expand(B, gh, gw, D))
        return out, None, None, None, None


def grid_part_pool(tokens, grid, y_pooling=False, cls_weight=0.0, part_weight=1.0):
    """Part vectors of a patch-token grid: ``cls_weight · cls + part_weight · part_i``, part i = the
    mean of grid row i (x-pooling), or with ``y_pooling`` the average of row i's and column i's
    means (LA-Transformer's globally enhanced local tokens: ``cls_weight = 1/(1+λ)``,
    ``part_weight = λ/(1+λ)``; the plain parts: 0 and 1).

    Args:
        tokens: [B, 1 + gh·gw, D] float, CLS first, then the patches row-major.
        grid: (gh, gw); ``y_pooling`` needs gh == gw.
        y_pooling, cls_weight, part_weight: as above (Python numbers).

    Returns: [B, gh, D], tokens' dtype. Raises ValueError for tokens that are not
    [B, 1 + gh·gw, D] or y-pooling on a non-square grid.

    Source: LA-Transformer (Sharma et al. 2021), the official code's row-average parts and GELTs;
    y-pooling from the note on it (../shared/papers/003_*.txt).
    """
    gh, gw = grid
    if tokens.dim() != 3 or tokens.shape[1] != 1 + gh * gw:
        raise ValueError(f"tokens: expected [B, {1 + gh * gw}, D] for a {gh}x{gw} grid, got {tuple(tokens.shape)}")
    if y_pooling and gh != gw:
        raise ValueError(f"grid: y_pooling needs a square grid, got {gh}x{gw}")
    args = (tokens, (int(gh), int(gw)), bool(y_pooling), float(cls_weight), float(part_weight))
    if torch.is_grad_enabled() and tokens.requires_grad:
        return _GridPartPool.apply(*args)
    return _pool(*args)


class _CosinePartLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, scale, eps):
        norm = torch.linalg.vector_norm(weight, dim=-1)  # [P, C]
        inv = norm.clamp_min(eps).reciprocal()
        raw = torch.bmm(features.transpose(0, 1), weight.transpose(1, 2))  # [P, B, C]
        ctx.save_for_backward(features, weight, norm, inv, raw)
        ctx.scale, ctx.eps = scale, eps
        return (raw * (scale * inv).unsqueeze(1)).transpose(0, 1)

    @staticmethod
    def backward(ctx, grad):
        features, weight, norm, inv, raw = ctx.saved_tensors
        dt = torch.promote_types(torch.promote_types(features.dtype, weight.dtype), grad.dtype)
        f, w = features.to(dt), weight.to(dt)
        gs = grad.transpose(0, 1).to(dt) * (ctx.scale * inv).unsqueeze(1).to(dt)  # d/d raw, [P, B, C]
        grad_features = torch.bmm(gs, w).transpose(0, 1)
        # through the norm (F.normalize's clamp passes the gradient where norm >= eps):
        # d/dW of raw/n = −(raw/n²)·W/n, summed over the batch
        coef = (gs * raw.to(dt)).sum(dim=1) * (inv.square() * (norm >= ctx.eps)).to(dt)  # [P, C]
        # in place: an out-of-place baddbmm would first copy its [P, C, K] input into the result
        grad_weight = (w * (-coef).unsqueeze(-1)).baddbmm_(gs.transpose(1, 2), f.transpose(0, 1))
        return grad_features, grad_weight, None, None


def cosine_part_logits(features, weight, scale=1.0, eps=1e-12):
    """``scale · ⟨features[b, p], W[p, c]⟩ / max(‖W[p, c]‖, eps)`` for every sample b, part p and
    class c: each part's cosine logits against its own class weights when ``features`` are unit
    rows; equal to ``scale · einsum('bpk,pck->bpc', features, F.normalize(weight, dim=-1, eps=eps))``
    in value and gradient.

    Args:
        features: [B, P, K] float (normalise them first for cosines). weight: [P, C, K] float.
        scale: s (Python number). eps: the norm's floor (F.normalize's).

    Returns: [B, P, C] of weight's dtype (under autocast the GEMM runs in the autocast dtype,
    and the division by the weight norms brings the logits back to weight's dtype). Raises
    ValueError for mismatched shapes, TypeError for features and weight of different dtypes
    outside autocast.

    Source: the cosine logits of AM-Softmax (Wang et al., "Additive Margin Softmax", 2018), one
    classifier per part as in LA-Transformer's improved head (the margin is the loss's).
    """
    if features.dim() != 3 or weight.dim() != 3 or features.shape[1] != weight.shape[0] \
            or features.shape[2] != weight.shape[2]:
        raise ValueError(f"features [B, P, K] and weight [P, C, K] expected, got {tuple(features.shape)} "
                         f"and {tuple(weight.shape)}")
    if features.dtype != weight.dtype and not torch.is_autocast_enabled(features.device.type):
        raise TypeError(f"features and weight: expected one dtype, got {features.dtype} and {weight.dtype}")
    return _CosinePartLogits.apply(features, weight, float(scale), float(eps))

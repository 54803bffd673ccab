"""Op ``reidkern::topk_token_aggregate``: per-part top-k token selection and score-weighted mean.

CAL's discriminative region mining (P = Ŝᵀ T / Σ Ŝ) in one fused forward and one fused backward
instead of topk + gather + scatter + matmul (csrc/cpu/topk_token_aggregate.cpp,
csrc/cuda/topk_token_aggregate.cu, reidkern/triton/topk_token_aggregate.py; oracle in
reidkern/ops/reference/topk_token_aggregate.py).
"""
import math
from typing import NamedTuple

import numpy as np
import torch

from reidkern._library import native_available
from reidkern.ops import _autograd
from reidkern.ops import _validate as V
from reidkern.ops._backend import resolve_backend
from reidkern.ops.reference.topk_token_aggregate import topk_token_aggregate_reference

_OP = "topk_token_aggregate"


class TopKAggregateResult(NamedTuple):
    """Result of :func:`topk_token_aggregate` (a tuple: ``parts, indices, selected = ...`` works)."""

    parts: torch.Tensor     #: [B, Np, C] score-weighted mean of each part's kept tokens
    indices: torch.Tensor   #: [B, Np, k] int64 kept token indices, by decreasing score
    selected: torch.Tensor  #: [B, L, Np] the scores where kept, 0 elsewhere (CAL's Ŝ)

if native_available():
    @torch.library.register_fake("reidkern::topk_token_aggregate_fwd")
    def _(scores, tokens, k):
        B, L, Np = scores.shape
        return (scores.new_empty(B, Np, tokens.shape[2]),
                scores.new_empty(B, Np, k, dtype=torch.int64), scores.new_empty(B, L, Np))

    @torch.library.register_fake("reidkern::topk_token_aggregate_bwd")
    def _(grad_parts, grad_selected, scores, tokens, indices):
        return scores.new_empty(scores.shape), torch.empty_like(tokens)


def _make_autograd(backward_op):
    """``(backward, setup_context)`` for a topk_token_aggregate forward op (outputs parts, indices,
    selected) whose backward op takes (grad_parts, grad_selected, scores, tokens, indices); the
    C++/CUDA and the Triton forward both get it (reidkern/ops/_autograd.py)."""

    def setup_context(ctx, inputs, output):
        scores, tokens, k = inputs
        _, indices, _ = output
        ctx.save_for_backward(scores, tokens, indices)
        ctx.mark_non_differentiable(indices)

    def backward(ctx, grad_parts, grad_indices, grad_selected):
        scores, tokens, indices = ctx.saved_tensors
        if grad_parts is None:
            grad_parts = scores.new_zeros(scores.shape[0], scores.shape[2], tokens.shape[2])
        grad_selected = grad_selected.contiguous() if grad_selected is not None else None
        dscores, dtokens = backward_op(grad_parts.contiguous(), grad_selected, scores, tokens, indices)
        return dscores, dtokens, None

    return backward, setup_context


_triton = _autograd.attach(_OP, _make_autograd)


def resolve_k(L, Np, k=None, alpha=None):
    """Tokens kept per part: ``k`` itself, or CAL's ``N_k = ceil(alpha * L / Np)``."""
    if (k is None) == (alpha is None):
        raise ValueError("give exactly one of k or alpha")
    if alpha is not None:
        if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.number)):
            raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
        if not 0 < alpha < math.inf:
            raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
        if Np == 0:
            raise ValueError("alpha needs Np >= 1 parts (k = ceil(alpha * L / Np)); give k instead")
        k = math.ceil(alpha * L / Np)
        if k > L:
            raise ValueError(f"alpha={alpha} gives k = ceil(alpha*L/Np) = {k} > L = {L}")
        return max(int(k), 1)
    k = V.check_int(k, "k")
    if k < 1 or k > L:
        raise ValueError(f"k must be in [1, L] = [1, {L}], got {k}")
    return k


def _validate(scores, tokens):
    V.check_float_tensors((("scores", scores), ("tokens", tokens)))
    if scores.dim() != 3:
        raise ValueError(f"scores must be 3-D [B, L, Np], got shape {tuple(scores.shape)}")
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be 3-D [B, L, C], got shape {tuple(tokens.shape)}")
    if tokens.shape[:2] != scores.shape[:2]:
        raise ValueError(f"tokens must be [B, L, C] with scores' B, L = {tuple(scores.shape[:2])}, "
                         f"got {tuple(tokens.shape)}")
    if tokens.dtype != scores.dtype:
        raise TypeError(f"scores and tokens must have the same dtype, got {scores.dtype} and {tokens.dtype}")
    if tokens.device != scores.device:
        raise ValueError(f"scores and tokens must be on the same device, got {scores.device} and {tokens.device}")
    if scores.shape[1] == 0:
        raise ValueError(f"scores must have L >= 1 tokens, got shape {tuple(scores.shape)}")
    return V.finite_magnitudes((("scores", scores), ("tokens", tokens)))


def topk_token_aggregate(scores, tokens, k=None, alpha=None, backend=None, validate=True):
    """Per part, the score-weighted mean of its k highest-scoring tokens (CAL DRM, fused).

    ``P[b, p] = Σ_{l ∈ top-k(S[b, :, p])} S[b, l, p] T[b, l] / Σ_{l ∈ top-k} S[b, l, p]``, i.e.
    P = Ŝᵀ T / Σ Ŝ with Ŝ = top-k(S, N_k) (CAL, Sec. "token selection and aggregation").

    Args:
        scores: [B, L, Np] part scores of each token (CAL: softmax over the Np parts), float.
        tokens: [B, L, C] token features (flattened feature map), same dtype and device.
        k: tokens kept per part (1 <= k <= L); or
        alpha: CAL's selection ratio, k = ceil(alpha * L / Np). Give exactly one of k and alpha.
        backend: "cpp", "cuda", "triton" or "reference".
        validate: True (default) checks every argument first (see Raises); False skips the
            checks, for arguments the caller has already checked (docs/adding_an_op.md).

    Returns:
        :class:`TopKAggregateResult` ``(parts, indices, selected)``: parts [B, Np, C] (differentiable w.r.t. scores and tokens);
        indices [B, Np, k] int64, by decreasing score, ties to the lowest token index; selected =
        Ŝ [B, L, Np], the scores where kept and 0 elsewhere (differentiable; CAL's diversity loss
        uses triu(ŜᵀŜ, 1)). Where a part's kept scores sum to 0 the divisor is taken as 1
        (divisor 1: P = Σ Ŝ T, which is 0 when every kept score is 0, as with softmax scores;
        scores [1, -1] over tokens [1, 2] give -1), in every backend.

    Empty input (B = 0, Np = 0 or C = 0) gives empty outputs; NaN/inf scores or tokens are
    refused (a NaN has no place in a top-k order). Meta tensors give meta outputs.

    Raises:
        TypeError: non-tensor or non-floating inputs, mismatched dtypes, non-int k, non-number
            alpha.
        ValueError: wrong shapes, L = 0, mismatched devices, k outside [1, L], both/neither of k
            and alpha given, alpha not positive and finite, NaN/inf in scores or tokens, sums
            that could overflow (k max|scores| max(|tokens|, 1) > max / 2^16).
    """
    mags = _validate(scores, tokens) if validate else []
    B, L, Np = scores.shape
    k = resolve_k(L, Np, k, alpha)
    if mags and k * mags[0] * max(mags[1], 1.0) > V.compute_max(scores.dtype) / 2 ** 16:
        raise ValueError(f"scores, tokens: k * max|scores| * max|tokens| = "
                         f"{k * mags[0] * mags[1]:.3g} exceeds the range of {scores.dtype} "
                         "computation (the weighted sums could overflow); rescale them")
    choice = resolve_backend(_OP, scores.device, backend)
    in_dtype = scores.dtype
    if in_dtype in (torch.float16, torch.bfloat16):
        scores, tokens = scores.float(), tokens.float()
    if B * Np == 0 or tokens.shape[2] == 0:  # empty output: no kernel (strides of empties vary)
        choice = "reference"
    if choice in ("cpp", "cuda", "triton"):
        if tokens.stride(-1) != 1 and tokens.shape[-1] > 1:
            tokens = tokens.contiguous()
        if choice == "triton":
            parts, indices, selected = _triton().topk_token_aggregate_triton(scores, tokens, k)
        else:
            parts, indices, selected = torch.ops.reidkern.topk_token_aggregate_fwd(scores, tokens, k)
    else:
        parts, indices, selected = topk_token_aggregate_reference(scores, tokens, k)
    if parts.dtype != in_dtype:
        parts, selected = parts.to(in_dtype), selected.to(in_dtype)
    return TopKAggregateResult(parts, indices, selected)

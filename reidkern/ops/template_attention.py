"""Op ``reidkern::template_attention``: a few learned queries cross-attending over image/word tokens.

Part templates (DPTI), dictionary atoms and prototypes (LGUR), part queries (CAL): Nq = 1–32
queries over L <= 512 keys, head dim up to 512. The kernels fuse logits, softmax and the weighted
sum per (batch, head), save only the log-sum-exp per query row, and recompute the probabilities in
a fused backward (csrc/cpu/template_attention*.cpp, csrc/cuda/template_attention.cu,
reidkern/triton/template_attention.py; oracle in reidkern/ops/reference/template_attention.py).
"""
import math
from typing import NamedTuple, Optional

import numpy as np
import torch

from reidkern._library import native_available
from reidkern.ops import _autograd
from reidkern.ops import _validate as V
from reidkern.ops._backend import resolve_backend
from reidkern.ops.reference.template_attention import template_attention_reference

_OP = "template_attention"


class TemplateAttentionResult(NamedTuple):
    """Result of :func:`template_attention` (a tuple: ``out, weights, mean_logit = ...`` works).
    The optional fields are None unless asked for; the type never depends on the flags."""

    out: torch.Tensor                   #: [B, H, Nq, D] attended values
    weights: Optional[torch.Tensor]     #: [B, H, Nq, L] softmax weights (``return_weights=True``)
    mean_logit: Optional[torch.Tensor]  #: [B, H, Nq] mean scaled logit (``return_mean_logit=True``)


def _make_autograd(backward_op):
    """``(backward, setup_context)`` for a template_attention forward op whose outputs are
    (out, lse, mean_logit, weights) and whose backward op takes (grad_out, grad_weights,
    grad_mean_logit, q, k, v, key_padding_mask, lse, scale); the C++/CUDA and the Triton forward
    both get it (reidkern/ops/_autograd.py)."""

    def setup_context(ctx, inputs, output):
        q, k, v, key_padding_mask, scale, return_weights = inputs
        ctx.save_for_backward(q, k, v, key_padding_mask, output[1])
        ctx.scale = scale
        ctx.return_weights = return_weights

    def backward(ctx, grad_out, grad_lse, grad_mean, grad_weights):
        q, k, v, key_padding_mask, lse = ctx.saved_tensors
        B, H, L, D = k.shape
        if grad_out is None:
            grad_out = q.new_zeros(B, H, q.shape[2], D)
        grad_weights = grad_weights.contiguous() if (ctx.return_weights and grad_weights is not None) else None
        grad_mean = grad_mean.contiguous() if grad_mean is not None else None
        dq, dk, dv = backward_op(grad_out.contiguous(), grad_weights, grad_mean, q, k, v,
                                 key_padding_mask, lse, ctx.scale)
        if q.shape[0] != B:  # q broadcast over the batch: its gradient sums over the batch
            dq = dq.sum(dim=0, keepdim=True)
        return dq, dk, dv, None, None, None

    return backward, setup_context


if native_available():
    @torch.library.register_fake("reidkern::template_attention_fwd")
    def _(q, k, v, key_padding_mask, scale, return_weights):
        B, H, L, D = k.shape
        Nq = q.shape[2]
        weights = q.new_empty(B, H, Nq, L) if return_weights else q.new_empty(0)
        return q.new_empty(B, H, Nq, D), q.new_empty(B, H, Nq), q.new_empty(B, H, Nq), weights

    @torch.library.register_fake("reidkern::template_attention_bwd")
    def _(grad_out, grad_weights, grad_mean_logit, q, k, v, key_padding_mask, lse, scale):
        B, H, L, D = k.shape
        return q.new_empty(B, H, q.shape[2], D), torch.empty_like(k), torch.empty_like(v)


_triton = _autograd.attach(_OP, _make_autograd)


def _validate(q, k, v, key_padding_mask, scale):
    """Checks every argument; returns (scale as a float, B)."""
    V.check_float_tensors((("q", q), ("k", k), ("v", v)))
    if q.dim() != 4:
        raise ValueError(f"q must be 4-D [B or 1, H, Nq, D], got shape {tuple(q.shape)}")
    if k.dim() != 4:
        raise ValueError(f"k must be 4-D [B, H, L, D], got shape {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape [B, H, L, D] = {tuple(k.shape)}, got {tuple(v.shape)}")
    _, H, L, D = k.shape
    B = _batch(q, k, key_padding_mask)
    if q.shape[0] not in (1, B) or q.shape[1] != H or q.shape[3] != D:
        raise ValueError(f"q must be [B or 1, H, Nq, D] = [{B} or 1, {H}, Nq, {D}] to match k, "
                         f"got {tuple(q.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on the same device, got {q.device}, {k.device}, {v.device}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor):
            raise TypeError("key_padding_mask must be a bool tensor [B, L] or None")
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask must have dtype torch.bool (True = padding), "
                            f"got {key_padding_mask.dtype}")
        if tuple(key_padding_mask.shape) != (B, L):
            raise ValueError(f"key_padding_mask must be [B, L] = [{B}, {L}], "
                             f"got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask must be on {q.device}, got {key_padding_mask.device}")
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    elif isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a Python number or None, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    # NaN/inf refused; logits scale * q.k bounded by |scale| max|q| max|k| D must fit the compute
    # dtype (with room for the softmax sums), else they could overflow: refused, never NaN out.
    mags = V.finite_magnitudes((("q", q), ("k", k), ("v", v)))
    if mags:
        bound = abs(scale) * mags[0] * mags[1] * D
        if bound > V.compute_max(q.dtype) / 2 ** 16:
            raise ValueError(f"q, k: |scale| * max|q| * max|k| * D = {bound:.3g} exceeds the range of "
                             f"{q.dtype} computation: the logits could overflow; rescale q or k"
                             + ("" if q.dtype == torch.float64 else ", or use float64"))
    return float(scale), B


def _batch(q, k, key_padding_mask):
    """The batch size B: k's, else q's (each may be 1, broadcast), else the mask's [B, L] rows."""
    B = k.shape[0] if k.shape[0] != 1 else q.shape[0]
    if B == 1 and isinstance(key_padding_mask, torch.Tensor) and key_padding_mask.dim() == 2:
        B = key_padding_mask.shape[0]
    return B


def _unit_last(t):
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def template_attention(q, k, v, key_padding_mask=None, scale=None, return_weights=False,
                       return_mean_logit=False, backend=None, validate=True):
    """Cross-attention of a few learned queries over tokens, fused forward and backward.

    ``out[b, h, i] = sum_j softmax_j(scale * q[b, h, i] . k[b, h, j]) v[b, h, j]`` over the keys
    not marked as padding — DPTI's part templates (Eq. 5–6, use ``scale=1.0``), LGUR's dictionary
    and prototype attention, CAL's TSAA spatial attention.

    Args:
        q: [B, H, Nq, D] or [1, H, Nq, D] queries; batch 1 (learned queries) is broadcast without
            a copy and its gradient is summed over the batch. Nq is typically 1–32.
        k, v: [B, H, L, D] or [1, H, L, D] keys and values (L up to a few hundred, D up to 512).
            Any strides with a unit stride on D (e.g. ``x.view(B, L, H, D).transpose(1, 2)``) are
            used in place. Batch 1 (a dictionary shared by the batch, LGUR DGA) is broadcast
            without a copy and its gradient is summed over the batch.
        key_padding_mask: optional [B, L] bool, True = padding (ignored), as in
            ``nn.MultiheadAttention``. A query whose keys are all padding gets zeros (not NaN) and
            zero gradients.
        scale: logit scale, default ``1/sqrt(D)``.
        return_weights: also return the attention weights [B, H, Nq, L] (differentiable).
        return_mean_logit: also return the mean scaled logit over the valid keys per query
            [B, H, Nq] (differentiable; DPTI's mean of γ_i, Eq. 5, for its part-presence weights).
        backend: "cpp", "cuda", "triton" or "reference" (see reidkern.ops._backend).
        validate: True (default) checks every argument first (see Raises); False skips the
            checks, for arguments the caller has already checked (docs/adding_an_op.md).

    Returns:
        :class:`TemplateAttentionResult` ``(out, weights, mean_logit)``: out [B, H, Nq, D];
        weights and mean_logit as asked for, else None. In the inputs' dtype (float16/bfloat16
        are computed in float32 and cast back).

    Raises:
        TypeError: non-tensor or non-floating q/k/v, mismatched dtypes, a non-bool mask, a
            non-numeric scale.
        ValueError: wrong shapes (q not [B or 1, H, Nq, D] matching k, k not [B or 1, H, L, D],
            v not k's shape, mask not [B, L]), mismatched devices, an unknown backend, NaN/inf in
            q, k or v, a non-finite scale, logits that could overflow the compute dtype
            (|scale| max|q| max|k| D > max / 2^16: about 5e33 in float32).

    Empty input (any of B, H, Nq, L, D = 0) gives the empty or zero output of the formula (no
    keys: zeros, as for a fully padded row). Meta tensors give meta outputs.
    """
    if validate:
        scale, B = _validate(q, k, v, key_padding_mask, scale)
    else:
        D = k.shape[3]
        scale = float(scale) if scale is not None else (1.0 / math.sqrt(D) if D > 0 else 1.0)
        B = _batch(q, k, key_padding_mask)
    if k.shape[0] == 1 and B != 1:
        # A dictionary shared by the batch: broadcast without a copy; autograd sums its gradient.
        # (Running the batch as B*Nq query rows of one batch instead was tried and was slower on
        # the CPU kernel at LGUR's DGA shape.)
        k, v = k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)
    choice = resolve_backend(_OP, q.device, backend)
    in_dtype = q.dtype
    if in_dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    if q.numel() == 0 or k.numel() == 0:  # empty batch, heads, queries, keys or width
        choice = "reference"  # no kernel: the strides of empty tensors vary (no unit stride)
        if key_padding_mask is None and k.shape[2] == 0:  # no keys: as a fully padded row (zeros)
            key_padding_mask = torch.ones(B, 0, dtype=torch.bool, device=q.device)
    if choice in ("cpp", "cuda", "triton"):
        q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
        mask = key_padding_mask.contiguous() if key_padding_mask is not None else None
        if choice == "triton":
            out, _, mean_logit, weights = _triton().template_attention_triton(q, k, v, mask, scale,
                                                                              return_weights)
        else:
            out, _, mean_logit, weights = torch.ops.reidkern.template_attention_fwd(
                q, k, v, mask, scale, bool(return_weights))
    else:
        out, weights, mean_logit = template_attention_reference(q, k, v, key_padding_mask, scale)
    if in_dtype != out.dtype:
        out, weights, mean_logit = out.to(in_dtype), weights.to(in_dtype), mean_logit.to(in_dtype)
    return TemplateAttentionResult(out, weights if return_weights else None,
                                   mean_logit if return_mean_logit else None)

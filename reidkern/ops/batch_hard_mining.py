"""Op ``reidkern::batch_hard_mining_fwd`` / ``_bwd``: pairwise distances and batch-hard mining in one pass.

For every anchor, the hardest positive (largest distance among candidates with the same label,
the anchor itself excluded) and the hardest negative (smallest distance among candidates with
another label) — Hermans et al. 2017, "In Defense of the Triplet Loss for Person
Re-Identification", batch-hard mining (L_BH). No mask, sort or distance matrix is kept for the
backward, which (``reidkern::batch_hard_mining_bwd``) touches only the 2B chosen pairs. The
CPU kernel takes the Gram values from BLAS in row tiles of at most 2^20 values and mines each tile
at once; the CUDA and Triton kernels keep the Gram block in registers / shared memory.

Kernels: csrc/cpu/batch_hard_mining.cpp, csrc/cuda/batch_hard_mining.cu,
reidkern/triton/batch_hard_mining.py; oracle in reidkern/ops/reference/batch_hard_mining.py.
"""
import math
from typing import NamedTuple

import torch

from reidkern._amp import autocast_enabled, autocast_off
from reidkern._library import native_available
from reidkern.ops import _autograd
from reidkern.ops import _validate as V
from reidkern.ops._backend import resolve_backend
from reidkern._metric import Metric
from reidkern.ops.reference.batch_hard_mining import batch_hard_mining_reference


_OP = "batch_hard_mining"


class BatchHardResult(NamedTuple):
    """Result of :func:`batch_hard_mining` (all [B], on the embeddings' device)."""

    dist_ap: torch.Tensor  #: distance to the hardest positive (0 where the anchor has none)
    dist_an: torch.Tensor  #: distance to the hardest negative (0 where the anchor has none)
    p_index: torch.Tensor  #: int64 candidate index of the hardest positive, -1 where none
    n_index: torch.Tensor  #: int64 candidate index of the hardest negative, -1 where none
    valid: torch.Tensor    #: bool, the anchor has both a positive and a negative


if native_available():
    @torch.library.register_fake("reidkern::batch_hard_mining_fwd")
    def _(embeddings, labels, ref_embeddings, ref_labels, metric, self_offset):
        b = embeddings.shape[0]
        return (embeddings.new_empty(b), embeddings.new_empty(b),
                embeddings.new_empty(b, dtype=torch.int64), embeddings.new_empty(b, dtype=torch.int64))

    @torch.library.register_fake("reidkern::batch_hard_mining_bwd")
    def _(grad_dist_ap, grad_dist_an, embeddings, ref_embeddings, dist_ap, dist_an, p_index,
          n_index, metric):
        return torch.empty_like(embeddings), torch.empty_like(ref_embeddings)


def _make_autograd(backward_op):
    """``(backward, setup_context)`` for a batch_hard_mining forward op (outputs dist_ap, dist_an,
    p_index, n_index) whose backward op takes (grad_dist_ap, grad_dist_an, embeddings,
    ref_embeddings, dist_ap, dist_an, p_index, n_index, metric); the C++/CUDA and the Triton
    forward both get it (reidkern/ops/_autograd.py)."""

    def setup_context(ctx, inputs, output):
        embeddings, _, ref_embeddings, _, metric, _ = inputs
        dist_ap, dist_an, p_index, n_index = output
        ctx.save_for_backward(embeddings, ref_embeddings, dist_ap, dist_an, p_index, n_index)
        ctx.metric = metric
        ctx.mark_non_differentiable(p_index, n_index)

    def backward(ctx, grad_ap, grad_an, _gp, _gn):
        embeddings, ref_embeddings, dist_ap, dist_an, p_index, n_index = ctx.saved_tensors
        if grad_ap is None:
            grad_ap = torch.zeros_like(dist_ap)
        if grad_an is None:
            grad_an = torch.zeros_like(dist_an)
        gx, gy = backward_op(grad_ap.contiguous(), grad_an.contiguous(), embeddings, ref_embeddings,
                             dist_ap, dist_an, p_index, n_index, ctx.metric)
        return gx, None, gy, None, None, None

    return backward, setup_context


_triton = _autograd.attach(_OP, _make_autograd)


def _check_finite(x, name):
    """One pass (a sum) in the common case: any NaN / inf makes the sum non-finite; only then (or on
    overflow of the sum itself) the element-wise check decides."""
    with torch.no_grad():
        if x.numel() and x.device.type != "meta" and not bool(torch.isfinite(x.sum())):
            V.check_finite(x, name)


def _pow2_mul(t, e):
    """t * 2**e in steps that never form a power of two outside t's dtype range."""
    while e:
        step = max(-60, min(60, e))
        t = t * (2.0 ** step)
        e -= step
    return t


def _large_exponent(embeddings, ref_embeddings):
    """e > 0 when the embeddings are so large (beyond 2^(maxexp/4): 2^32 in float32, 2^256 in
    float64) that |x|^2 could overflow; they are then mined as x * 2^-e (into [0.5, 1)) and the
    distances scaled back. 0 otherwise, for meta tensors and inside compiled graphs."""
    if embeddings.device.type == "meta" or torch.compiler.is_compiling():
        return 0
    ts = (embeddings,) if ref_embeddings is None else (embeddings, ref_embeddings)
    amax = V.max_abs(*ts)
    max_exponent = math.frexp(torch.finfo(embeddings.dtype).max)[1]
    if not amax > 2.0 ** (max_exponent // 4):
        return 0
    return math.frexp(amax)[1]


def _validate(embeddings, labels, ref_embeddings, ref_labels, metric, self_offset):
    Metric.from_name(metric)  # ValueError naming the metrics for anything else
    embeddings = V.floating(V.as_tensor(embeddings, "embeddings"), "embeddings")
    V.check_ndim(embeddings, 2, "embeddings", "[B, D]")
    if embeddings.shape[1] == 0:
        raise ValueError("embeddings has feature dimension D = 0; expected [B, D] with D >= 1")
    dev = embeddings.device
    labels = V.check_ids(labels, embeddings.shape[0], "labels", "B (rows of embeddings)", dev)
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError("ref_embeddings and ref_labels must be given together")
    if ref_embeddings is not None:
        ref_embeddings = V.floating(V.as_tensor(ref_embeddings, "ref_embeddings"), "ref_embeddings")
        V.check_ndim(ref_embeddings, 2, "ref_embeddings", "[M, D]")
        if ref_embeddings.shape[1] != embeddings.shape[1]:
            raise ValueError(f"ref_embeddings has feature dimension {ref_embeddings.shape[1]}, "
                             f"expected D = {embeddings.shape[1]} (embeddings)")
        if ref_embeddings.device != dev:
            raise ValueError(f"ref_embeddings is on {ref_embeddings.device}, embeddings on {dev}")
        dtype = torch.promote_types(embeddings.dtype, ref_embeddings.dtype)
        embeddings, ref_embeddings = embeddings.to(dtype), ref_embeddings.to(dtype)
        ref_labels = V.check_ids(ref_labels, ref_embeddings.shape[0], "ref_labels",
                                 "M (rows of ref_embeddings)", dev)
    if self_offset is not None:
        V.check_int(self_offset, "self_offset")
    if not torch.compiler.is_compiling():  # data-dependent checks stay out of compiled graphs
        _check_finite(embeddings, "embeddings")
        if ref_embeddings is not None:
            _check_finite(ref_embeddings, "ref_embeddings")
    return embeddings, labels, ref_embeddings, ref_labels


def batch_hard_mining(embeddings, labels, metric="euclidean", ref_embeddings=None,
                      ref_labels=None, self_offset=None, backend=None, validate=True):
    """Batch-hard mining (Hermans et al. 2017): distance and hardest positive / negative per anchor.

    Anchors are the rows of ``embeddings``; candidates are the rows of ``ref_embeddings`` when given
    (a memory bank, or the batch gathered from every process — see :mod:`reidkern.distributed`),
    else the batch itself. A positive is a candidate with the anchor's label other than the anchor
    itself (candidate ``i + self_offset`` for anchor ``i``); a negative is a candidate with another
    label. Ties go to the lowest candidate index. Anchors without a positive or a negative are
    reported in ``valid`` (their distance is 0 and index -1, never NaN).

    Distances: ``"euclidean"`` = sqrt(clamp(|x|² + |y|² − 2x·y, min=1e-12)) as fast-reid and torchreid
    compute it (the clamp keeps the gradient finite at coincident points, where it is 0);
    ``"sqeuclidean"`` = max(|x|² + |y|² − 2x·y, 0); ``"cosine"`` = 1 − x̂·ŷ, x̂ = x / max(|x|, 1e-12).

    Differentiable w.r.t. ``embeddings`` and ``ref_embeddings``: the backward computes
    d(dist)/d(x) for only the 2B chosen pairs (a compiled kernel, no B x M matrix).

    Args:
        embeddings: [B, D] float32/float64 (float16/bfloat16 are computed in float32).
        labels: [B] integer identity labels.
        metric: "euclidean", "sqeuclidean" or "cosine".
        ref_embeddings: optional [M, D] candidate set; ref_labels: its [M] integer labels.
        self_offset: candidate ``i + self_offset`` is anchor ``i`` itself and never its positive.
            Default 0 without a ref set, none (-1) with one.
        backend: "cpp", "cuda", "triton" or "reference" (see reidkern.ops._backend).
        validate: True (default) checks every argument first (see Raises); False skips the
            checks, for arguments the caller has already checked (docs/adding_an_op.md).

    Returns:
        :class:`BatchHardResult` ``(dist_ap, dist_an, p_index, n_index, valid)``, each [B].

    Raises:
        ValueError: wrong shapes, label / embedding length mismatch, D = 0, NaN or inf, unknown
            metric, ref_embeddings without ref_labels, distances that overflow the dtype.
        TypeError: non-integer labels, non-numeric embeddings, a non-int self_offset.

    Scale: embeddings beyond 2^32 (float32) / 2^256 (float64) are mined after an exact
    power-of-two rescaling and their distances scaled back, so any finite embeddings give the
    float64 reference's result; a distance that does not fit the dtype raises ValueError. Meta
    tensors give meta results of the right shapes.

    Under ``torch.autocast`` the op runs with autocast off, in the embeddings' own dtype (float32
    inside for float16/bfloat16), as torch runs ``cdist``: autocast would lower the kernels'
    ``x·y`` products to bfloat16/float16, where ``|x|² + |y|² − 2x·y`` cancels and close rows come
    out at distance 0.
    """
    dev = getattr(embeddings, "device", None)
    if dev is not None and autocast_enabled(dev.type):
        with autocast_off(dev.type):
            return batch_hard_mining(embeddings, labels, metric, ref_embeddings, ref_labels, self_offset,
                                     backend, validate)
    if validate:
        embeddings, labels, ref_embeddings, ref_labels = _validate(
            embeddings, labels, ref_embeddings, ref_labels, metric, self_offset)
    e = _large_exponent(embeddings, ref_embeddings)
    if e:
        embeddings = _pow2_mul(embeddings, -e)
        ref_embeddings = None if ref_embeddings is None else _pow2_mul(ref_embeddings, -e)
    if ref_embeddings is None:
        ref_embeddings, ref_labels = embeddings, labels
        offset = 0 if self_offset is None else int(self_offset)
    else:
        offset = -1 if self_offset is None else int(self_offset)
    choice = resolve_backend(_OP, embeddings.device, backend)
    code = int(Metric.from_name(metric))
    if choice in ("cpp", "cuda"):
        out = torch.ops.reidkern.batch_hard_mining_fwd(embeddings, labels, ref_embeddings, ref_labels,
                                                       code, offset)
    elif choice == "triton":
        out = _triton().batch_hard_mining_triton_fwd(embeddings, labels, ref_embeddings, ref_labels,
                                                     code, offset)
    else:
        out = batch_hard_mining_reference(embeddings, labels, ref_embeddings, ref_labels, metric,
                                          offset)
    dist_ap, dist_an, p_index, n_index = out
    if e and metric != "cosine":  # cosine is scale-free
        back = e if metric == "euclidean" else 2 * e
        dist_ap, dist_an = _pow2_mul(dist_ap, back), _pow2_mul(dist_an, back)
        if not bool(torch.isfinite(dist_ap).all() & torch.isfinite(dist_an).all()):
            raise ValueError(f"embeddings: {metric} distances of magnitude beyond "
                             f"{embeddings.dtype}'s range (largest |x| about 2^{e}); use float64 "
                             "or rescale the embeddings")
    return BatchHardResult(dist_ap, dist_an, p_index, n_index, (p_index >= 0) & (n_index >= 0))

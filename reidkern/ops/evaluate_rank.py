"""Op ``reidkern::evaluate_rank``: per-query CMC first hit, AP and INP from a distance matrix.

No Q x G argsort and no Q x G index array: for each positive gallery entry the kernels count the
valid entries ranked ahead of it (csrc/cpu/evaluate_rank.cpp, csrc/cuda/evaluate_rank.cu,
reidkern/triton/evaluate_rank.py; oracle in reidkern/ops/reference/evaluate_rank.py).
"""
from typing import NamedTuple

import torch

from reidkern._library import native_available
from reidkern.ops import _validate as V
from reidkern.ops._backend import resolve_backend
from reidkern.ops.reference.evaluate_rank import evaluate_rank_reference

if native_available():
    @torch.library.register_fake("reidkern::evaluate_rank")
    def _(distmat, q_pids, g_pids, q_camids, g_camids, trapezoid):
        num_q = distmat.shape[0]
        return (distmat.new_empty(num_q, dtype=torch.int64),
                distmat.new_empty(num_q, dtype=torch.float64),
                distmat.new_empty(num_q, dtype=torch.float64))


class PerQueryRankResult(NamedTuple):
    """Result of :func:`evaluate_rank_per_query` (a tuple: ``first_hit, all_AP, all_INP = ...``
    works)."""

    first_hit: torch.Tensor  #: [Q] int64 0-based rank of the first true match, -1 without one
    all_AP: torch.Tensor     #: [Q] float64 average precision per query (0 without a match)
    all_INP: torch.Tensor    #: [Q] float64 inverse negative penalty per query (0 without a match)


class NonFiniteDistanceError(ValueError):
    """distmat holds NaN or inf (raised by :func:`evaluate_rank_per_query`)."""


def validate_rank_inputs(distmat, q_pids, g_pids, q_camids, g_camids):
    """Checks and normalises evaluate_rank's inputs; returns them as tensors on distmat's device."""
    # detached: the statistics are not differentiable, and the kernels have no autograd
    distmat = V.floating(V.as_tensor(distmat, "distmat"), "distmat").detach()
    V.check_ndim(distmat, 2, "distmat", "[num_query, num_gallery]")
    V.check_not_meta(distmat, "distmat")
    num_q, num_g = distmat.shape
    if num_q == 0:
        raise ValueError("distmat has no query rows (empty query set)")
    if num_g == 0:
        raise ValueError("distmat has no gallery columns (empty gallery)")
    dev = distmat.device
    q_pids = V.check_ids(q_pids, num_q, "q_pids", "num_query", dev)
    g_pids = V.check_ids(g_pids, num_g, "g_pids", "num_gallery", dev)
    q_camids = V.check_ids(q_camids, num_q, "q_camids", "num_query", dev)
    g_camids = V.check_ids(g_camids, num_g, "g_camids", "num_gallery", dev)
    return distmat, q_pids, g_pids, q_camids, g_camids


def evaluate_rank_per_query(distmat, q_pids, g_pids, q_camids, g_camids, trapezoid=False,
                            backend=None, validate=True):
    """Per-query ranking statistics under the Market-1501 protocol.

    Gallery entries with the query's pid *and* camid are dropped; the remaining entries are ranked
    by distance, ties by gallery index (as a stable sort orders them).

    Args:
        distmat: [Q, G] float32/float64 distances (smaller = more similar); any strides.
        q_pids, q_camids: [Q] integer ids. g_pids, g_camids: [G] integer ids.
        trapezoid: AP by the Market-1501 MATLAB trapezoid rule instead of the mean precision at
            each hit (torchreid / fast-reid).
        backend: "cpp", "cuda", "triton" or "reference" (see reidkern.ops._backend).
        validate: True (default) checks every argument first (see Raises); False skips the
            checks, for arguments the caller has already checked (docs/adding_an_op.md).

    Returns:
        :class:`PerQueryRankResult` ``(first_hit, all_AP, all_INP)``, each [Q] on distmat's device: first_hit int64 is the
        0-based rank of the first true match (-1 when the query has no positive left), all_AP and
        all_INP float64 (0 where first_hit is -1). The kernels check finiteness in their own pass
        over the row (first_hit -2 internally), so no extra pass over distmat is made.

    Raises:
        ValueError: wrong shapes or lengths, empty query or gallery, NaN or inf distances.
        TypeError: non-integer ids or a non-numeric distmat.
    """
    if validate:
        distmat, q_pids, g_pids, q_camids, g_camids = validate_rank_inputs(
            distmat, q_pids, g_pids, q_camids, g_camids)
    choice = resolve_backend("evaluate_rank", distmat.device, backend)
    if choice in ("cpp", "cuda"):
        out = torch.ops.reidkern.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids,
                                               bool(trapezoid))
    elif choice == "triton":
        from reidkern.triton.evaluate_rank import evaluate_rank_triton
        out = evaluate_rank_triton(distmat, q_pids, g_pids, q_camids, g_camids, trapezoid)
    else:
        out = evaluate_rank_reference(distmat, q_pids, g_pids, q_camids, g_camids, trapezoid)
        out = tuple(t.to(distmat.device) for t in out)
    if bool((out[0] == -2).any()):
        raise NonFiniteDistanceError("distmat contains NaN or inf")
    return PerQueryRankResult(*out)

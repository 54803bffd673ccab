"""CMC / mAP / mINP evaluation under the Market-1501 protocol (torchreid / fast-reid semantics)."""
from dataclasses import dataclass, field
import warnings

import torch

from reidkern.metrics.distance import check_metric, ranking_distance
from reidkern.ops import _validate as V
from reidkern.ops._backend import resolve_backend
from reidkern.ops.evaluate_rank import (NonFiniteDistanceError, evaluate_rank_per_query,
                                        validate_rank_inputs)


@dataclass
class RankResult:
    """Result of :func:`evaluate_rank` / :func:`evaluate_features`.

    Attributes:
        cmc: [max_rank] float64 tensor; ``cmc[r]`` is the fraction of valid queries whose first
            true match is within the top r+1 (rank-1 = ``cmc[0]``).
        mAP: mean average precision over valid queries, in [0, 1].
        mINP: mean inverse negative penalty (Ye et al., TPAMI 2021) over valid queries, in [0, 1].
        all_AP, all_INP: [Q] float64 per-query values, NaN for skipped queries.
        first_hit: [Q] int64 0-based rank of each query's first true match, -1 when skipped.
        num_valid_queries: queries with at least one positive left in the gallery.
        num_skipped_queries: queries with none (skipped, as torchreid does).
    """

    cmc: torch.Tensor
    mAP: float
    mINP: float
    all_AP: torch.Tensor
    all_INP: torch.Tensor
    first_hit: torch.Tensor
    num_valid_queries: int
    num_skipped_queries: int
    max_rank: int = field(default=50)

    def rank(self, k: int) -> float:
        """Rank-k accuracy (CMC at k, 1-based), e.g. ``result.rank(1)``."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"k must be in [1, {len(self.cmc)}], got {k}")
        return float(self.cmc[k - 1])

    def __iter__(self):
        """Unpacks like torchreid's ``cmc, mAP = evaluate_rank(...)``."""
        return iter((self.cmc, self.mAP))

    def summary(self, ranks=(1, 5, 10)) -> str:
        parts = [f"Rank-{k}: {100 * self.rank(k):.2f}%" for k in ranks if k <= len(self.cmc)]
        return (", ".join(parts) + f", mAP: {100 * self.mAP:.2f}%, mINP: {100 * self.mINP:.2f}%"
                + f" ({self.num_valid_queries} valid queries, {self.num_skipped_queries} skipped)")


def _check_max_rank(max_rank, num_g):
    max_rank = V.check_int(max_rank, "max_rank", minimum=1)
    if num_g < max_rank:
        warnings.warn(f"max_rank={max_rank} exceeds the gallery size {num_g}; using {num_g}",
                      stacklevel=3)
        return num_g
    return max_rank


def _summarise(first_hit, all_ap, all_inp, max_rank):
    first_hit, all_ap, all_inp = first_hit.cpu(), all_ap.cpu(), all_inp.cpu()
    valid = first_hit >= 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a true match in the gallery (all queries skipped): "
                         "check q_pids/g_pids and the camera ids")
    hits = first_hit[valid].clamp(max=max_rank)
    cmc = torch.bincount(hits, minlength=max_rank + 1)[:max_rank].cumsum(0).double() / num_valid
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    all_ap = torch.where(valid, all_ap, nan)
    all_inp = torch.where(valid, all_inp, nan)
    return RankResult(cmc=cmc, mAP=float(all_ap[valid].mean()), mINP=float(all_inp[valid].mean()),
                      all_AP=all_ap, all_INP=all_inp, first_hit=first_hit,
                      num_valid_queries=num_valid, num_skipped_queries=len(first_hit) - num_valid,
                      max_rank=max_rank)


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, trapezoid=False,
                  backend=None) -> RankResult:
    """CMC, mAP and mINP from a query-gallery distance matrix (Market-1501 protocol).

    Gallery entries sharing the query's pid and camid are dropped; a query left with no positive is
    skipped and counted. AP is the mean precision at each true match (torchreid / fast-reid), or the
    Market-1501 MATLAB trapezoid rule with ``trapezoid=True``; INP = #positives / (rank of the last
    positive). Ties are ranked by gallery index, as a stable sort orders them. Exact: no sort of the
    gallery and no Q×G index array is made.

    Args:
        distmat: [Q, G] distances (tensor or array; float16/bfloat16/int widened), CPU or CUDA.
        q_pids, q_camids: [Q] integer ids. g_pids, g_camids: [G] integer ids.
        max_rank: length of the CMC curve (clipped to G with a warning, as torchreid does).
        trapezoid: use the Market-1501 MATLAB AP.
        backend: "cpp" | "cuda" | "triton" | "reference"; default per device (reidkern.ops._backend).

    Returns:
        :class:`RankResult` (``cmc``, ``mAP``, ``mINP``, ``all_AP``, ``all_INP``,
        ``num_valid_queries``, ...); unpacks as ``cmc, mAP`` like torchreid's.

    Raises:
        ValueError: shapes or lengths that disagree, empty query or gallery, NaN/inf distances,
            max_rank < 1, or no query with a true match.
        TypeError: non-integer ids, non-int max_rank.

    Source: Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015 (protocol and
    MATLAB AP); torchreid ``eval_market1501``; Ye et al., TPAMI 2021 (mINP).
    """
    distmat, q_pids, g_pids, q_camids, g_camids = validate_rank_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids)
    max_rank = _check_max_rank(max_rank, distmat.shape[1])
    out = evaluate_rank_per_query(distmat, q_pids, g_pids, q_camids, g_camids, trapezoid,
                                  backend=backend, validate=False)
    return _summarise(*out, max_rank)


def _tile_rows(num_g: int, budget_bytes: int = 256 << 20) -> int:
    return max(1, min(4096, budget_bytes // max(1, 4 * num_g)))


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric="euclidean", max_rank=50,
                      trapezoid=False, backend=None, tile_rows=None, progress=None) -> RankResult:
    """CMC, mAP and mINP straight from features, without ever holding the Q×G distance matrix.

    Distances (see :func:`reidkern.metrics.distance.ranking_distance`: squared Euclidean for
    "euclidean" and "sqeuclidean", 1 − cosine, in the features' dtype) are computed for a tile of query rows at a time and ranked
    at once; peak extra memory is ``tile_rows × G`` distances (256 MB of float32 by default).

    Args:
        qf: [Q, D] query features; gf: [G, D] gallery features (same dtype and device; float16 and
            bfloat16 are computed in float32).
        q_pids, q_camids: [Q]; g_pids, g_camids: [G] integer ids.
        metric: "euclidean", "sqeuclidean" (the same ranking) or "cosine".
        max_rank, trapezoid, backend: as in :func:`evaluate_rank`.
        tile_rows: query rows per tile (default: fits 256 MB of distances).
        progress: show a tqdm progress bar; default when there is more than one tile.

    Returns:
        :class:`RankResult`.

    Raises:
        ValueError: features not 2-D, feature dimensions that differ (or are 0), mismatched
            devices, NaN/inf features, lengths that disagree, an unknown metric or backend,
            max_rank < 1, tile_rows < 1, meta tensors.
        TypeError: non-integer ids, non-int max_rank or tile_rows.

    Scale: any finite features (their ranking does not depend on a common scale; see the
    numeric contract in docs/numeric_contract.md).
    """
    check_metric(metric)
    qf = V.floating(V.as_tensor(qf, "qf"), "qf")
    gf = V.floating(V.as_tensor(gf, "gf"), "gf")
    V.check_ndim(qf, 2, "qf", "[num_query, dim]")
    V.check_ndim(gf, 2, "gf", "[num_gallery, dim]")
    if qf.shape[1] != gf.shape[1] or qf.shape[1] == 0:
        raise ValueError(f"qf and gf must have the same non-zero feature dimension, got "
                         f"{qf.shape[1]} and {gf.shape[1]}")
    if qf.device != gf.device:
        raise ValueError(f"qf is on {qf.device} but gf is on {gf.device}")
    V.check_not_meta(qf, "qf")
    if qf.shape[0] == 0 or gf.shape[0] == 0:
        raise ValueError("qf and gf must each hold at least one feature (empty query or gallery)")
    V.check_finite(qf, "qf")
    V.check_finite(gf, "gf")
    if qf.dtype != gf.dtype:
        qf, gf = qf.double(), gf.double()
    # Rankings are scale-free: features whose largest magnitude is outside [2^-16, 2^16] are
    # scaled by a power of two (exact), so squared distances and norms neither overflow nor
    # underflow (float32 features of 1e19 or 1e-25 rank as those of 1 do).
    e = V.pow2_exponent(V.max_abs(qf, gf), -16, 16)
    if e:
        qf, gf = torch.ldexp(qf, qf.new_tensor(-e)), torch.ldexp(gf, gf.new_tensor(-e))
    num_q, num_g = qf.shape[0], gf.shape[0]
    dev = qf.device
    q_pids = V.check_ids(q_pids, num_q, "q_pids", "num_query", dev)
    g_pids = V.check_ids(g_pids, num_g, "g_pids", "num_gallery", dev)
    q_camids = V.check_ids(q_camids, num_q, "q_camids", "num_query", dev)
    g_camids = V.check_ids(g_camids, num_g, "g_camids", "num_gallery", dev)
    max_rank = _check_max_rank(max_rank, num_g)
    backend = resolve_backend("evaluate_rank", dev, backend)  # a bad backend fails here, by name
    rows = V.check_tile_rows(tile_rows) or _tile_rows(num_g)
    starts = range(0, num_q, rows)
    if progress is None:
        progress = len(starts) > 1
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="evaluate", unit="tile", leave=False)
    outs = []
    for s in starts:
        e = min(s + rows, num_q)
        dist = ranking_distance(qf[s:e], gf, metric)
        try:
            outs.append(evaluate_rank_per_query(dist, q_pids[s:e], g_pids, q_camids[s:e],
                                                g_camids, trapezoid, backend=backend,
                                                validate=False))
        except NonFiniteDistanceError as exc:  # finite features whose distances overflow
            raise ValueError("qf/gf distances overflowed to inf: rescale the features or use "
                             "float64") from exc
    first_hit, all_ap, all_inp = (torch.cat([o[k] for o in outs]) for k in range(3))
    return _summarise(first_hit, all_ap, all_inp, max_rank)

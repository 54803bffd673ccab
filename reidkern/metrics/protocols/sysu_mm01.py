"""SYSU-MM01 visible–infrared protocol (Wu et al., ICCV 2017), as the AGW / DDAG / CAJ code
(``eval_metrics.eval_sysu``) and the dataset's MATLAB evaluation run it.

Queries are the infrared images (cameras 3 and 6) of the 96 test identities; the gallery is
drawn from the visible cameras (all-search: 1, 2, 4, 5; indoor-search: 1, 2) — one image per
identity and camera (single-shot) or ten (multi-shot) — ten times, and the results are averaged.
The one removal rule: queries from camera 3 skip every gallery image of camera 2 (the two share a
room). No other gallery image is dropped. CMC is counted over *distinct identities* (rank k = the
true identity is among the first k different identities of the ranked list, the "unique" CMC of the
official code); mAP and mINP over the kept list, from reidkern's ``evaluate_rank`` kernels.

Camera ids here are 0-based (``Record.camid``): camera 3 is 2, camera 2 is 1.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from reidkern.metrics.distance import check_metric, ranking_distance
from reidkern.metrics.protocols.common import TrialsResult, check_query_ids
from reidkern.metrics.rank import RankResult, _check_max_rank, _summarise
from reidkern.ops import _validate as V
from reidkern.ops.evaluate_rank import evaluate_rank_per_query

__all__ = ["evaluate_sysu_mm01", "evaluate_sysu_mm01_distmat", "SKIP_CAMERAS"]

#: (query camid, gallery camid) pairs removed, 0-based: camera 3 queries skip camera 2.
SKIP_CAMERAS = ((2, 1),)

_ROWS = 1024


def _distinct_ranks(distmat, q_pids, g_pids, q_camids, g_camids, skip_cameras):
    """0-based rank of the first true match counted in distinct identities (−1: no positive).

    Per query: the first true match is the kept positive of least (distance, gallery index) — the
    kernels' order; the entries ahead of it are the kept ones of smaller distance, or of equal
    distance and smaller index; their distinct identities are counted with one matmul against the
    gallery's one-hot identity matrix. No sort."""
    num_q, num_g = distmat.shape
    uniq, codes = torch.unique(g_pids, return_inverse=True)
    onehot = torch.nn.functional.one_hot(codes).to(torch.float32)  # [G, U]
    # identities as small codes: the [Q, G] comparison below reads 4-byte ints, not 8
    g_code = codes.to(torch.int32)
    q_code = torch.searchsorted(uniq, q_pids).clamp(max=len(uniq) - 1)
    q_code = torch.where(uniq[q_code] == q_pids, q_code, -1).to(torch.int32)  # −1: id not in gallery
    col = torch.arange(num_g, device=distmat.device)
    out = torch.empty(num_q, dtype=torch.int64, device=distmat.device)
    for s in range(0, num_q, _ROWS):
        e = min(num_q, s + _ROWS)
        d = distmat[s:e]
        keep = torch.ones_like(d, dtype=torch.bool)
        for qc, gc in skip_cameras:
            keep &= ~((q_camids[s:e, None] == qc) & (g_camids[None] == gc))
        pos = (g_code[None] == q_code[s:e, None]) & keep
        d_hit = torch.where(pos, d, float("inf")).amin(1, keepdim=True)
        tie = d == d_hit
        j_hit = (pos & tie).to(torch.uint8).argmax(1, keepdim=True)
        ahead = keep & ((d < d_hit) | (tie & (col[None] < j_hit)))
        distinct = ((ahead.to(torch.float32) @ onehot) > 0).sum(1)
        out[s:e] = torch.where(pos.any(1), distinct, torch.full_like(distinct, -1))
    return out


def evaluate_sysu_mm01_distmat(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 20,
                               missing: str = "raise", skip_cameras=SKIP_CAMERAS, backend=None
                               ) -> RankResult:
    """One SYSU-MM01 trial from a [Q, G] distance matrix.

    Args:
        distmat: [Q, G] distances (float32/float64). q_pids, q_camids: [Q]; g_pids, g_camids:
            [G] int ids, camids 0-based.
        max_rank: CMC length (AGW: 20). missing: "raise" or "skip" for query ids absent from the
            gallery. skip_cameras: (query camid, gallery camid) pairs removed.

    Returns:
        RankResult whose ``cmc`` is the distinct-identity CMC; ``first_hit`` the ordinary 0-based
        rank of the first true match.

    Raises:
        ValueError: bad shapes/ids, query ids absent from the gallery (``missing="raise"``),
        no valid query.
    """
    distmat = V.floating(V.as_tensor(distmat, "distmat"), "distmat")
    V.check_ndim(distmat, 2, "distmat", "[num_query, num_gallery]")
    num_q, num_g = distmat.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat: empty query or gallery (shape {tuple(distmat.shape)})")
    dev = distmat.device
    q_pids = V.check_ids(q_pids, num_q, "q_pids", "num_query", dev)
    g_pids = V.check_ids(g_pids, num_g, "g_pids", "num_gallery", dev)
    q_camids = V.check_ids(q_camids, num_q, "q_camids", "num_query", dev)
    g_camids = V.check_ids(g_camids, num_g, "g_camids", "num_gallery", dev)
    # NaN/inf: the evaluate_rank kernels check every distance they rank (no extra pass here)
    check_query_ids(q_pids, g_pids, missing)
    max_rank = _check_max_rank(max_rank, num_g)
    first_hit = torch.full((num_q,), -1, dtype=torch.int64, device=dev)
    all_ap = torch.zeros(num_q, dtype=torch.float64, device=dev)
    all_inp = torch.zeros(num_q, dtype=torch.float64, device=dev)
    groups = []  # (query mask, gallery column mask)
    rest = torch.ones(num_q, dtype=torch.bool, device=dev)
    for qc, gc in skip_cameras:
        qm = q_camids == qc
        groups.append((qm, g_camids != gc))
        rest &= ~qm
    groups.append((rest, torch.ones(num_g, dtype=torch.bool, device=dev)))
    for qm, gm in groups:
        if not bool(qm.any()) or not bool(gm.any()):
            continue
        rows, cols = qm.nonzero().squeeze(1), gm.nonzero().squeeze(1)
        sub = distmat if len(rows) == num_q else distmat[rows]
        sub = sub if len(cols) == num_g else sub[:, cols]
        # the only removal is the camera rule above: camids that never collide keep the rest
        fh, ap, inp = evaluate_rank_per_query(
            sub, q_pids[rows], g_pids[cols], torch.full_like(rows, -1), torch.full_like(cols, -2),
            backend=backend, validate=False)
        first_hit[rows], all_ap[rows], all_inp[rows] = fh, ap, inp
    distinct = _distinct_ranks(distmat, q_pids, g_pids, q_camids, g_camids, skip_cameras)
    result = _summarise(distinct, all_ap, all_inp, max_rank)
    result.first_hit = first_hit.cpu()
    return result


def evaluate_sysu_mm01(qf, gf, q_pids, g_pids, q_camids, g_camids,
                       trials: Optional[Sequence] = None, metric: str = "euclidean",
                       max_rank: int = 20, missing: str = "raise", backend=None) -> TrialsResult:
    """SYSU-MM01 over trials: mean ± std of the distinct-identity CMC, mAP and mINP.

    Args:
        qf: [Q, D] infrared query features; gf: [G, D] features of the gallery *pool* (all
            candidate visible images, e.g. ``SYSUMM01.gallery_pool``).
        q_pids, q_camids, g_pids, g_camids: ids (camids 0-based).
        trials: one index sequence into the pool per trial (``SYSUMM01.gallery_trials()``);
            None = one trial over the whole pool.
        metric: "euclidean" (squared) or "cosine". max_rank, missing, backend: as
            :func:`evaluate_sysu_mm01_distmat`.

    Returns:
        :class:`TrialsResult` (``mean``/``std`` of R1, R5, R10, R20, mAP, mINP; per-trial results).
    """
    check_metric(metric)
    qf = V.floating(V.as_tensor(qf, "qf"), "qf")
    gf = V.floating(V.as_tensor(gf, "gf"), "gf")
    V.check_ndim(qf, 2, "qf", "[num_query, dim]")
    V.check_ndim(gf, 2, "gf", "[num_gallery, dim]")
    g_pids = V.check_ids(g_pids, gf.shape[0], "g_pids", "num_gallery", gf.device)
    g_camids = V.check_ids(g_camids, gf.shape[0], "g_camids", "num_gallery", gf.device)
    if trials is None:
        trials = [torch.arange(gf.shape[0])]
    results = []
    for t, idx in enumerate(trials):
        idx = torch.as_tensor(idx, dtype=torch.int64, device=gf.device)
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= gf.shape[0]:
            raise ValueError(f"trials[{t}]: indices must lie in [0, {gf.shape[0]}) and be non-empty")
        distmat = ranking_distance(qf, gf[idx], metric)
        results.append(evaluate_sysu_mm01_distmat(distmat, q_pids, g_pids[idx], q_camids,
                                                  g_camids[idx], max_rank, missing, backend=backend))
    return TrialsResult.from_trials(results)

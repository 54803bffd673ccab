"""Eager reference of evaluate_rank: torchreid's ``eval_market1501`` algorithm in float64 NumPy.

A full Q x G argsort (stable, so ties keep gallery order), Q x G match matrix, then a per-query
Python loop: exactly what the field's evaluation code does, kept as oracle and baseline.
"""
import numpy as np
import torch


def _np(x, dtype):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def evaluate_rank_reference(distmat, q_pids, g_pids, q_camids, g_camids, trapezoid=False):
    """Per-query first-hit rank, AP and INP, computed the torchreid way.

    Args:
        distmat: [Q, G] distances (any float dtype; compared in float64, which is exact for float32).
        q_pids, q_camids: [Q] integer ids; g_pids, g_camids: [G] integer ids.
        trapezoid: Market-1501 MATLAB AP (trapezoid rule) instead of mean precision at each hit.

    Returns:
        (first_hit [Q] int64, -1 for queries without positives; all_AP [Q] float64; all_INP [Q]
        float64), on the CPU; AP and INP are 0 where first_hit is -1; first_hit is -2 for rows
        holding NaN or inf (as the kernels flag them).
    """
    dist = _np(distmat, np.float64)
    q_pids, g_pids = _np(q_pids, np.int64), _np(g_pids, np.int64)
    q_camids, g_camids = _np(q_camids, np.int64), _np(g_camids, np.int64)
    num_q = dist.shape[0]
    indices = np.argsort(dist, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    first_hit = np.full(num_q, -1, dtype=np.int64)
    all_ap = np.zeros(num_q, dtype=np.float64)
    all_inp = np.zeros(num_q, dtype=np.float64)
    finite = np.isfinite(dist).all(axis=1)
    for i in range(num_q):
        if not finite[i]:
            first_hit[i] = -2
            continue
        order = indices[i]
        remove = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        raw_cmc = matches[i][~remove]
        if not np.any(raw_cmc):
            continue
        hits = np.flatnonzero(raw_cmc)  # 0-based ranks of the positives
        first_hit[i] = hits[0]
        num_rel = len(hits)
        precision = np.arange(1, num_rel + 1) / (hits + 1.0)
        if trapezoid:
            old_precision = np.where(hits == 0, 1.0, np.arange(num_rel) / np.maximum(hits, 1.0))
            all_ap[i] = np.sum(0.5 * (old_precision + precision)) / num_rel
        else:
            all_ap[i] = precision.sum() / num_rel
        all_inp[i] = num_rel / (hits[-1] + 1.0)
    return torch.from_numpy(first_hit), torch.from_numpy(all_ap), torch.from_numpy(all_inp)
